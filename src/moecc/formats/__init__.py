"""The file formats moecc reads and writes, one module each:

    moecc_file   the .moecc file: one self-describing, mmappable file per model (read + write)
    huggingface  a Hugging Face checkpoint folder: config.json, safetensors shards, tokenizer files

`moecc.loader` turns a model file into what the engine runs; `moecc.convert` turns a Hugging
Face folder into a .moecc file.
"""


class FormatError(ValueError):
    """A model file moecc cannot run: damaged, truncated, of another model, or from a newer moecc."""
