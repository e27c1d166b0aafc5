"""The request rules of ``servesim serve`` (sim.serve.openai_api), without a server: token counts, defaults, refusals."""

from __future__ import annotations

import json

import pytest

from sim.serve import openai_api as api


def test_text_prompt_counts_one_token_per_four_utf8_bytes_rounded_up():
    assert api.text_tokens("") == 1  # at least one
    assert api.text_tokens("abcd") == 1
    assert api.text_tokens("abcde") == 2
    assert api.text_tokens("é" * 4) == 2  # 8 bytes
    assert api.parse_ask({"prompt": "x" * 40}, chat=False).prompt_tokens == 10


def test_token_id_prompts_count_one_token_per_id():
    assert api.parse_ask({"prompt": [5, 6, 7]}, chat=False).prompt_tokens == 3
    assert api.parse_ask({"prompt": [[5, 6, 7, 8]]}, chat=False).prompt_tokens == 4  # a batch of one


def test_chat_messages_joined_by_newlines_and_max_completion_tokens_wins():
    body = {"messages": [{"role": "system", "content": "abc"}, {"role": "user",
                                                               "content": [{"type": "text", "text": "defg"}]}],
            "max_tokens": 5, "max_completion_tokens": 7, "stream": True, "stream_options": {"include_usage": True}}
    ask = api.parse_ask(body, chat=True)
    assert ask.prompt_tokens == 2  # "abc\ndefg": 8 bytes
    assert (ask.max_tokens, ask.stream, ask.include_usage, ask.chat) == (7, True, True, True)


def test_defaults_as_vllm_16_tokens_for_completions_rest_of_context_for_chat():
    assert api.parse_ask({"prompt": "hi"}, chat=False).max_tokens == 16
    assert api.parse_ask({"messages": [{"role": "user", "content": "hi"}]}, chat=True).max_tokens is None


@pytest.mark.parametrize("raw, fragment", [
    (b'{"prompt": "x"', "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b"[" * 100_000, "malformed JSON"),
])
def test_malformed_bodies_are_400(raw, fragment):
    with pytest.raises(api.ApiError) as e:
        api.parse_json(raw)
    assert e.value.status == 400 and fragment in str(e.value)
    body = e.value.body()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == 400


@pytest.mark.parametrize("body, chat, param", [
    ({}, False, "prompt"),
    ({"prompt": 5}, False, "prompt"),
    ({"prompt": []}, False, "prompt"),
    ({"prompt": ["a", "b"]}, False, "prompt"),
    ({"prompt": [1, -2]}, False, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, False, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, False, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, False, "max_tokens"),
    ({"prompt": "x", "n": 2}, False, "n"),
    ({"prompt": "x", "stream": "yes"}, False, "stream"),
    ({"prompt": "x", "model": 3}, False, "model"),
    ({"messages": []}, True, "messages"),
    ({"messages": [{"content": "x"}]}, True, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, True, "messages"),
    ({"prompt": "x"}, True, "prompt"),
])
def test_malformed_fields_are_400_naming_the_field(body, chat, param):
    with pytest.raises(api.ApiError) as e:
        api.parse_ask(body, chat)
    assert e.value.status == 400 and e.value.param == param


def test_over_the_context_gives_vllms_reason():
    ask = api.parse_ask({"prompt": list(range(100)), "max_tokens": 30}, chat=False)
    e = api.context_error(ask, 128)
    assert e is not None and e.status == 400
    assert "maximum context length is 128 tokens" in str(e) and "130 tokens (100 in the prompt, 30 in the completion)" \
        in str(e)
    whole = api.context_error(api.parse_ask({"prompt": list(range(128))}, chat=False), 128)
    assert "your request has 128 input tokens" in str(whole)
    assert api.context_error(api.parse_ask({"prompt": list(range(98)), "max_tokens": 30}, chat=False), 128) is None


def test_bodies_have_openais_shapes():
    c = api.chunk(True, "chatcmpl-1", "m", 0, None, None, first=True)
    assert c["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert api.chunk(False, "cmpl-1", "m", 0, " tok", None)["choices"][0]["text"] == " tok"
    whole = api.completion(True, "chatcmpl-1", "m", 0, 3, "length", 9)
    assert whole["choices"][0]["message"]["content"] == api.PLACEHOLDER * 3
    assert whole["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert api.sse("[DONE]") == b"data: [DONE]\n\n"
    assert json.loads(api.sse({"a": 1})[6:]) == {"a": 1}
