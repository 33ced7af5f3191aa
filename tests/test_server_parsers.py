"""The Qwen3 output parser the server uses, on crafted outputs (random-weight fixtures never write
these tags): thinking, answer and tool calls, split tags, a tool call inside thinking, bad JSON;
and the chat responses (streamed and whole) the server makes of such outputs."""
import json

import pytest

from moecc.server.parsers import Parsed, Qwen3OutputParser

ANSWER_WITH_THINKING = "<think>\nLet me think.\n</think>\n\nThe answer is 4."
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}\n</tool_call>'


def _parse(pieces, starts_thinking=False):
    """Feed `pieces` one by one; the concatenated channels, and every piece's Parsed."""
    parser = Qwen3OutputParser(starts_thinking=starts_thinking)
    steps = [parser.feed(p) for p in pieces] + [parser.finish()]
    total = Parsed("".join(s.reasoning for s in steps), "".join(s.content for s in steps),
                   [c for s in steps for c in s.tool_calls])
    return total, steps, parser


def _every_split(text):
    """The text cut into pieces at every position, one character at a time, and in two pieces everywhere."""
    yield list(text)
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]


@pytest.mark.parametrize("pieces", list(_every_split(ANSWER_WITH_THINKING)))
def test_thinking_goes_to_reasoning_however_the_tags_are_split(pieces):
    total, steps, _ = _parse(pieces)
    assert total.reasoning == "Let me think.\n"
    assert total.content == "The answer is 4."
    for step in steps:  # no piece of a tag ever leaks into a channel
        assert "<" not in step.content and "<" not in step.reasoning


def test_tokens_of_a_close_tag_split_as_a_tokenizer_splits_them():
    total, steps, _ = _parse(["<think>", "\n", "Hmm", " <", "/th", "ink", ">", "\n\n", "Hi"])
    assert (total.reasoning, total.content) == ("Hmm ", "Hi")
    assert steps[3].reasoning == " " and steps[4].reasoning == ""  # "<", "/th" held back: they could be a tag


def test_a_template_that_opens_the_thinking_itself():
    total, _, _ = _parse(["I should", " greet.\n", "</think>", "\n\nHello!"], starts_thinking=True)
    assert (total.reasoning, total.content) == ("I should greet.\n", "Hello!")


def test_no_thinking_is_all_content_and_a_late_think_tag_is_text():
    total, _, _ = _parse(["Just ", "an answer; ", "<think>", " is a tag."])
    assert total.reasoning == "" and total.content == "Just an answer; <think> is a tag."


@pytest.mark.parametrize("pieces", list(_every_split("Checking.\n\n" + CALL)))
def test_a_tool_call_becomes_tool_calls(pieces):
    total, _, parser = _parse(pieces)
    assert total.content == "Checking.\n\n"
    (call,) = total.tool_calls
    assert call.index == 0 and call.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "°C"}
    assert parser.tool_calls == [call]


def test_two_calls_in_a_row_get_their_own_index_and_id():
    total, steps, _ = _parse([CALL, "\n", CALL.replace("Paris", "Oslo")])
    assert [c.index for c in total.tool_calls] == [0, 1]
    assert total.tool_calls[0].id != total.tool_calls[1].id
    assert json.loads(total.tool_calls[1].arguments)["city"] == "Oslo"
    assert total.content == ""
    assert steps[0].tool_calls and steps[2].tool_calls  # each call is passed on when it closes


def test_arguments_given_as_a_string_are_kept_as_they_are():
    total, _, _ = _parse(['<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'])
    assert total.tool_calls[0].arguments == '{"x": 1}'


def test_a_tool_call_inside_thinking_is_thinking():
    total, _, _ = _parse(["<think>\nI could call ", CALL, " but no.\n</think>\n\nNo call."])
    assert total.tool_calls == []
    assert CALL in total.reasoning and total.content == "No call."


@pytest.mark.parametrize("bad", ['{"name": "f", "arguments": {', '["f"]', '{"arguments": {}}', 'not json'])
def test_malformed_tool_call_json_is_returned_as_content(bad):
    text = f"<tool_call>\n{bad}\n</tool_call>"
    total, _, _ = _parse(["Try: ", text[:5], text[5:]])
    assert total.tool_calls == [] and total.content == "Try: " + text


def test_an_output_that_ends_inside_a_tool_call_is_content():
    total, _, _ = _parse(["<tool_call>\n", '{"name": "f", "argu'])
    assert total.tool_calls == [] and total.content == '<tool_call>\n{"name": "f", "argu'


def test_an_unfinished_tag_at_the_end_is_text():
    total, _, _ = _parse(["a <", "/thi"], starts_thinking=True)
    assert total.reasoning == "a </thi" and total.content == ""


def test_without_tool_call_parsing_calls_stay_text():
    parser = Qwen3OutputParser(tool_calls=False)
    total = parser.feed("<think>\nhm\n</think>\n\n" + CALL[:9]) + parser.feed(CALL[9:]) + parser.finish()
    assert (total.reasoning, total.content, total.tool_calls) == ("hm\n", CALL, [])


def _outputs(pieces):
    """Crafted scheduler outputs: one token per piece of text, the last finished by an EOS."""
    from moecc.server.scheduler import TokenOutput, Usage
    usage = Usage(prompt_tokens=9, cached_tokens=0, completion_tokens=len(pieces) + 1, time_to_first_token=0.1,
                  decode_seconds=0.2)
    return [TokenOutput(i, p, None) for i, p in enumerate(pieces)] + [TokenOutput(99, "", "stop", usage=usage)]


PIECES = ["<think>", "\n", "Weather", " first.", "\n</", "think>", "\n\n", "Let me check.", "\n",
          "<tool_call>", '\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}', "\n</tool_call>"]


def test_a_streamed_chat_response_of_thinking_and_a_call_as_openai_streams_it():
    import asyncio
    from moecc.server import protocol
    from moecc.server.http import chat_events
    req = protocol.parse(b'{"messages": [{"role": "user", "content": "x"}], "stream": true}', protocol.ChatRequest)

    async def outputs():
        for out in _outputs(PIECES):
            yield out

    async def events():
        return [e async for e in chat_events(outputs(), req, protocol.ChatResponse("m"), Qwen3OutputParser(), str)]
    raw = asyncio.run(events())
    assert raw[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[len(b"data: "):]) for e in raw[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Weather first.\n"
    assert "".join(d.get("content", "") for d in deltas) == "Let me check.\n"
    (calls,) = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["tool_calls"]
    assert all("<" not in d.get("content", "") + d.get("reasoning_content", "") for d in deltas)


def test_a_whole_chat_response_of_thinking_and_a_call():
    from moecc.server import protocol
    from moecc.server.http import chat_message
    req = protocol.parse(b'{"messages": [{"role": "user", "content": "x"}]}', protocol.ChatRequest)
    body = chat_message(_outputs(PIECES), req, protocol.ChatResponse("m"), Qwen3OutputParser(), str)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["reasoning_content"] == "Weather first.\n" and message["content"] == "Let me check.\n"
    assert message["tool_calls"][0]["function"]["name"] == "get_weather" and "index" not in message["tool_calls"][0]
    only_call = chat_message(_outputs(PIECES[9:]), req, protocol.ChatResponse("m"), Qwen3OutputParser(), str)
    assert only_call["choices"][0]["message"]["content"] is None  # OpenAI's null beside tool calls
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": len(PIECES) + 1,
                             "total_tokens": 9 + len(PIECES) + 1, "prompt_tokens_details": {"cached_tokens": 0}}
    # malformed call JSON: content, finish "stop"
    bad = chat_message(_outputs(["<tool_call>", "{oops", "</tool_call>"]), req, protocol.ChatResponse("m"),
                       Qwen3OutputParser(), str)
    assert bad["choices"][0]["finish_reason"] == "stop"
    assert bad["choices"][0]["message"] == {"role": "assistant", "content": "<tool_call>{oops</tool_call>"}
