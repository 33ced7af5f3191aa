"""The .moecc file format: one self-describing, mmappable file per model.  Read and write.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"MOECC\\x00\\x00\\x01"
    8       4     format version (uint32), currently 2
    12      4     reserved, 0
    16      8     header length H in bytes (uint64)
    24      8     data offset D (uint64): where the data section starts, a multiple of 4096
    32      H     header: UTF-8 JSON, described below
    32+H    ...   zero padding up to D
    D       ...   data section: tensors and embedded files, each at a multiple of 64 bytes

The JSON header is an object::

    {"config":  {...},            # Qwen3MoeConfig.to_dict(): Hugging Face key names
     "tensors": [{"name": str, "dtype": str, "shape": [int, ...],
                  "offset": int, "size": int, "crc32": int, ...type parameters...}, ...],
     "files":   [{"name": str, "offset": int, "size": int, "crc32": int}, ...],
     "writer":  {...}}            # who wrote it and how (informational)

`offset` is relative to D.  `size` is the exact byte count, which must equal what `dtype` and
`shape` imply.  `dtype` names a storage type of `moecc.storage` (f32, bf16, f16, q8, q4, q4p);
each tensor is row-major, last dimension contiguous, and `shape` is always the logical shape,
[..., rows, K].  The byte layouts are specified in `moecc.quant`.  A reader refuses a dtype it
does not know by naming it.

Versions: 1 had q8 / q4 rows of all values then all scales, with a `group_size` field (32 to
256); 2 stores q8 / q4 as ggml's Q8_0 / Q4_0 blocks (32 values, each block's fp16 scale before
its values), and reads a version-1 file that holds no q8 / q4 tensor (its f32, bf16 and q4p bytes
are the same).

Stacked experts are 3-D tensors [experts, rows, cols]: each expert's matrix is contiguous, so a
kernel reads one expert in one sweep.  `files` are the tokenizer and generation files of the
checkpoint, verbatim.  Every tensor and file carries the CRC-32 of its bytes, so damage to the
data itself can be found (`verify`).

A reader refuses a file whose magic is wrong, whose version is newer than it knows, or any
offset or size that falls outside the file, overlaps another, or is misaligned, before it
hands out a single view.
"""
from __future__ import annotations

import json
import mmap
import os
import stat
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .. import storage
from . import FormatError

MAGIC = b"MOECC\x00\x00\x01"
VERSION = 2
DATA_ALIGNMENT = 4096  # the data section starts on a page, so mmapped tensors are page-aligned
TENSOR_ALIGNMENT = 64  # one cache line / one AVX-512 register
_PREAMBLE = struct.Struct("<8sIIQQ")


def _integer(value) -> int:
    """A JSON integer of the header, as it was written (not a float, string or boolean)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class Entry:
    """One tensor or embedded file in the table: where its bytes lie relative to the data section."""
    name: str
    offset: int
    size: int
    crc32: int = 0
    dtype: str = ""  # the storage type (moecc.storage); "" for embedded files
    shape: tuple[int, ...] = ()

    def to_json(self) -> dict:
        d = {"name": self.name, "offset": self.offset, "size": self.size, "crc32": self.crc32}
        if self.dtype:
            d.update(dtype=self.dtype, shape=list(self.shape))
        return d


# --------------------------------------------------------------------------------------------
# writing


class Writer:
    """Writes a .moecc file in one pass, tensors in the order they were declared.

    The whole table is laid out up front (sizes follow from dtypes and shapes), so data streams
    straight to disk after the header.  Use it as a context manager: entering creates the file
    under a temporary name in the destination folder; leaving renames it into place (`commit`),
    or removes it if an exception (an interrupt included) ended the block (`abort`), so no
    half-written file is ever left under the output name.
    """

    def __init__(self, path: str | os.PathLike, config: dict,
                 tensors: list[tuple[str, str, tuple[int, ...]]], files: dict[str, bytes],
                 writer_info: dict | None = None):
        """`tensors`: (name, storage type, logical shape), in the order they will be written."""
        self.path = os.fspath(path)
        self._files = files
        self._order: list[Entry] = []
        offset = 0
        for name, dtype, shape in tensors:
            size = storage.get(dtype).tensor_bytes(shape)
            self._order.append(Entry(name, offset, size, dtype=dtype, shape=tuple(int(s) for s in shape)))
            offset = _align(offset + size, TENSOR_ALIGNMENT)
        self._file_entries = []
        for name, blob in files.items():
            self._file_entries.append(Entry(name, offset, len(blob), zlib.crc32(blob)))
            offset = _align(offset + len(blob), TENSOR_ALIGNMENT)
        self._data_size = offset
        self._config = config
        self._writer_info = writer_info or {}
        self._crcs: dict[str, int] = {}
        self._next = 0
        self._written_in_current = 0
        self._crc_current = 0
        self.tmp_path = os.path.join(os.path.dirname(os.path.abspath(self.path)),
                                     f".{os.path.basename(self.path)}.{os.getpid()}.partial")
        # The header holds CRCs that are known only at the end: reserve its space now with
        # placeholder CRCs of the widest width, rewrite it in place at commit.
        self._header_room = len(self._header_bytes(placeholder=True))
        self.data_offset = _align(_PREAMBLE.size + self._header_room, DATA_ALIGNMENT)
        self._f = None  # opened by __enter__, so that whatever opens it also removes it

    def _open(self) -> None:
        self._f = open(self.tmp_path, "wb")
        self._f.seek(self.data_offset)

    @property
    def data_size(self) -> int:
        return self._data_size

    def _header_bytes(self, placeholder: bool = False) -> bytes:
        def crc(e: Entry) -> int:
            return 0xFFFFFFFF if placeholder else self._crcs[e.name]
        tensors = [Entry(e.name, e.offset, e.size, crc(e), e.dtype, e.shape).to_json()
                   for e in self._order]
        files = [e.to_json() for e in self._file_entries]
        header = {"config": self._config, "tensors": tensors, "files": files, "writer": self._writer_info}
        return json.dumps(header, separators=(",", ":")).encode()

    def write(self, name: str, data: np.ndarray | bytes | memoryview) -> None:
        """Append bytes of tensor `name`: the whole tensor, or its next part (e.g. one expert)."""
        if self._next >= len(self._order):
            raise ValueError(f"tensor {name} written but the table is already complete")
        entry = self._order[self._next]
        if entry.name != name:
            raise ValueError(f"tensor {name} written where the table expects {entry.name}")
        buf = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) \
            else memoryview(data).cast("B")
        if self._written_in_current + buf.nbytes > entry.size:
            raise ValueError(f"tensor {name}: {self._written_in_current + buf.nbytes} bytes written, "
                             f"the table says {entry.size}")
        self._f.write(buf)
        self._crc_current = zlib.crc32(buf, self._crc_current)
        self._written_in_current += buf.nbytes
        if self._written_in_current == entry.size:
            self._crcs[name] = self._crc_current
            self._crc_current = self._written_in_current = 0
            self._next += 1
            if self._next < len(self._order):
                self._f.seek(self.data_offset + self._order[self._next].offset)

    def commit(self) -> None:
        """Write the embedded files and the header, then move the file into place."""
        if self._next != len(self._order):
            raise ValueError(f"tensor {self._order[self._next].name} was never written")
        for e in self._file_entries:
            self._f.seek(self.data_offset + e.offset)
            self._f.write(self._files[e.name])
        self._f.truncate(self.data_offset + self._data_size)
        header = self._header_bytes()
        header = header + b" " * (self._header_room - len(header))  # JSON allows trailing spaces
        self._f.seek(0)
        self._f.write(_PREAMBLE.pack(MAGIC, VERSION, 0, len(header), self.data_offset))
        self._f.write(header)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()
        if os.path.exists(self.tmp_path):
            os.unlink(self.tmp_path)

    def __enter__(self) -> "Writer":
        try:
            self._open()
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------
# reading


class ModelFile:
    """A .moecc file mapped read-only: the validated header and zero-copy views of its data."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise FormatError(f"{self.path}: no such file") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise FormatError(f"{self.path} is a folder; give the path of a .moecc file "
                                  "(moecc-convert makes one from a Hugging Face folder)")
            self.file_size = info.st_size
            if self.file_size < _PREAMBLE.size:
                raise FormatError(f"{self.path} is {self.file_size} bytes, too short to be a .moecc file")
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        try:
            self._parse()
        except BaseException:
            self._mm.close()
            raise

    def _parse(self) -> None:
        magic, version, _, header_len, data_offset = _PREAMBLE.unpack_from(self._mm, 0)
        if magic != MAGIC:
            raise FormatError(f"{self.path} is not a .moecc file (bad magic {magic!r}) nor a GGUF file; "
                              "moecc runs both: convert a Hugging Face checkpoint with moecc-convert")
        if version > VERSION:
            raise FormatError(f"{self.path} has format version {version}, newer than this moecc "
                              f"reads ({VERSION}); upgrade moecc")
        if version < 1:
            raise FormatError(f"{self.path} has invalid format version {version}")
        self.version = version
        if _PREAMBLE.size + header_len > self.file_size:
            raise FormatError(f"{self.path} is truncated: its header needs {header_len} bytes "
                              f"but the file is {self.file_size} bytes")
        if data_offset % DATA_ALIGNMENT or data_offset < _PREAMBLE.size + header_len \
                or data_offset > self.file_size:
            raise FormatError(f"{self.path}: data offset {data_offset} is invalid "
                              f"(file of {self.file_size} bytes); the file is damaged")
        self.header_bytes = bytes(self._mm[:_PREAMBLE.size + header_len])  # preamble + JSON header
        try:
            header = json.loads(self.header_bytes[_PREAMBLE.size:])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"{self.path}: header is not valid JSON ({e}); the file is damaged") from None
        if not isinstance(header, dict) or not isinstance(header.get("config"), dict) \
                or not isinstance(header.get("tensors"), list) or not isinstance(header.get("files", []), list):
            raise FormatError(f"{self.path}: header lacks config / tensors / files; the file is damaged")
        self.data_offset = data_offset
        self.data_size = self.file_size - data_offset
        self.config_dict: dict = header["config"]
        self.writer_info: dict = header.get("writer", {}) if isinstance(header.get("writer"), dict) else {}
        self.tensors = {e.name: e for e in (self._entry(raw, tensor=True) for raw in header["tensors"])}
        self.files = {e.name: e for e in (self._entry(raw, tensor=False) for raw in header.get("files", []))}
        if len(self.tensors) != len(header["tensors"]) or len(self.files) != len(header.get("files", [])):
            raise FormatError(f"{self.path}: a tensor or file name appears twice in the table")
        spans = sorted((e.offset, e.offset + e.size, e.name) for e in (*self.tensors.values(), *self.files.values()))
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise FormatError(f"{self.path}: {a} and {b} overlap in the data section; the file is damaged")

    def _entry(self, raw, tensor: bool) -> Entry:
        what = "tensor" if tensor else "file"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise FormatError(f"{self.path}: a {what} entry is malformed; the file is damaged")
        name = raw["name"]
        try:
            offset, size, crc = _integer(raw["offset"]), _integer(raw["size"]), _integer(raw.get("crc32", 0))
            dtype = raw["dtype"] if tensor else ""
            shape = tuple(_integer(s) for s in raw["shape"]) if tensor else ()
            group_size = _integer(raw.get("group_size", 0)) if tensor else 0  # version 1 only
            if not isinstance(dtype, str):
                raise TypeError(dtype)
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{self.path}: {what} {name} has a malformed entry; the file is damaged") from None
        if tensor:
            if dtype not in storage.TYPES:
                raise FormatError(f"{self.path}: tensor {name} has dtype {dtype!r}, which this moecc "
                                  f"does not know ({', '.join(storage.TYPES)}); upgrade moecc")
            if self.version == 1 and dtype in ("q8", "q4"):
                raise FormatError(f"{self.path} is a format-1 file with {dtype} tensors, whose layout "
                                  "changed in format 2 (ggml's Q8_0 / Q4_0 blocks: 32 values after "
                                  "their fp16 scale); re-convert the model with this moecc")
            if group_size not in (0, storage.QBLOCK):
                raise FormatError(f"{self.path}: tensor {name} has group size {group_size}; moecc "
                                  f"stores blocks of {storage.QBLOCK} only (re-convert the model)")
            if not shape or any(s <= 0 for s in shape):
                raise FormatError(f"{self.path}: tensor {name} has invalid shape {list(shape)}")
            try:
                expected = storage.get(dtype).tensor_bytes(shape)
            except ValueError as e:
                raise FormatError(f"{self.path}: tensor {name}: {e}; the file is damaged") from None
            if size != expected:
                raise FormatError(f"{self.path}: tensor {name} is {size} bytes but a {dtype} "
                                  f"{list(shape)} needs {expected}; the file is damaged")
            if offset % TENSOR_ALIGNMENT:
                raise FormatError(f"{self.path}: tensor {name} at offset {offset} is not "
                                  f"{TENSOR_ALIGNMENT}-byte aligned; the file is damaged")
        if offset < 0 or size < 0 or offset + size > self.data_size:
            raise FormatError(f"{self.path}: {what} {name} (offset {offset}, {size} bytes) lies past "
                              f"the end of the file; the file is truncated or damaged")
        return Entry(name, offset, size, crc, dtype, shape)

    def tensor(self, name: str) -> np.ndarray:
        """A read-only view of tensor `name`, in the dtype the kernels take (its storage type's
        view dtype); a quantized tensor is viewed as bytes [..., rows, row_bytes]."""
        e = self.tensors[name]
        st = storage.TYPES[e.dtype]
        count = e.size // st.view_dtype.itemsize
        return np.frombuffer(self._mm, st.view_dtype, count, self.data_offset + e.offset).reshape(st.view_shape(e.shape))

    def advise_unread(self, name: str, start: int, end: int) -> None:
        """Say that this process never reads bytes [start, end) of tensor `name`: the whole pages
        inside become a mapping region of their own (madvise MADV_RANDOM), so that the kernel,
        which maps the pages around a fault and whole large folios only within one region,
        never maps them for reads of their neighbours, and reads none of them ahead.  Does
        nothing where madvise is not available."""
        if not hasattr(mmap, "MADV_RANDOM"):
            return
        first = self.data_offset + self.tensors[name].offset + start
        first = (first + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        last = (self.data_offset + self.tensors[name].offset + end) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._mm.madvise(mmap.MADV_RANDOM, first, last - first)

    def file_bytes(self, name: str) -> bytes | None:
        """An embedded file's bytes (None if absent), checked against its CRC-32."""
        e = self.files.get(name)
        if e is None:
            return None
        blob = bytes(self._mm[self.data_offset + e.offset:self.data_offset + e.offset + e.size])
        if zlib.crc32(blob) != e.crc32:
            raise FormatError(f"{self.path}: embedded file {name} is damaged (CRC-32 mismatch); re-convert the model")
        return blob

    def verify(self) -> list[str]:
        """Names of tensors and files whose bytes do not match their stored CRC-32."""
        damaged = []
        with memoryview(self._mm) as data:
            for e in (*self.tensors.values(), *self.files.values()):
                start = self.data_offset + e.offset
                if zlib.crc32(data[start:start + e.size]) != e.crc32:
                    damaged.append(e.name)
        return damaged

    def close(self) -> None:
        """Unmap the file.  Views handed out before must no longer be used."""
        try:
            self._mm.close()
        except BufferError:  # views still exported: the mapping goes when the last one does
            pass
