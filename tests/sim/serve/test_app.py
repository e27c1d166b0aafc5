"""``servesim serve``'s HTTP endpoint in-process on a free port: OpenAI's routes streamed and not, 100 concurrent
clients, refusals (malformed JSON, unknown model, over the context), /metrics with vLLM's names.

Times are simulated on a constant cost model (1 s an iteration) run 200 times faster than the wall clock; the
assertions are on tokens, shapes and simulated times, never on how long the machine took."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from sim.cost.constant import ConstantCostModel
from sim.serving.simulator import SimConfig
from tests.sim.serve.serving import WAIT_S, serving

httpx = pytest.importorskip("httpx")


CONFIG = SimConfig(scheduler="sarathi", kv_blocks=2000)


def events(text: str) -> list:
    """The data of each server-sent event ("[DONE]" kept as the string)."""
    out = []
    for line in text.split("\n\n"):
        if line.strip():
            assert line.startswith("data: ")
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_streamed_completion_sends_each_token_then_finish_usage_and_done():
    with serving(CONFIG, ConstantCostModel(1.0), speedup=200) as (url, _state):
        r = httpx.post(f"{url}/v1/completions", timeout=WAIT_S, json={
            "model": "m", "prompt": [1] * 10, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = events(r.text)
    assert [e["choices"][0]["text"] for e in ev[:4]] == [" tok"] * 4
    assert ev[4]["choices"][0]["finish_reason"] == "length"
    assert ev[5]["choices"] == [] and ev[5]["usage"] == {"prompt_tokens": 10, "completion_tokens": 4,
                                                         "total_tokens": 14}
    assert ev[6] == "[DONE]" and len(ev) == 7
    assert {e["id"] for e in ev[:6]} == {"cmpl-0"}


def test_streamed_chat_opens_with_the_role_and_whole_chat_answers_at_once():
    with serving(CONFIG, ConstantCostModel(1.0), speedup=200) as (url, _state):
        s = httpx.post(f"{url}/v1/chat/completions", timeout=WAIT_S, json={
            "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 2, "stream": True})
        w = httpx.post(f"{url}/v1/chat/completions", timeout=WAIT_S, json={
            "messages": [{"role": "user", "content": "x" * 40}], "max_completion_tokens": 3})
    ev = events(s.text)
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"] for e in ev[1:3]] == [{"content": " tok"}] * 2
    assert ev[3]["choices"][0]["finish_reason"] == "length" and ev[4] == "[DONE]"
    body = w.json()
    assert w.status_code == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": " tok" * 3}
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


def test_hundred_concurrent_clients_are_all_answered_in_full():
    async def one(client: httpx.AsyncClient, url: str, i: int) -> tuple[str, int]:
        n = 1 + i % 7
        body = {"prompt": [i] * (1 + i % 50), "max_tokens": n, "stream": bool(i % 2)}
        r = await client.post(f"{url}/v1/completions", json=body)
        assert r.status_code == 200
        if body["stream"]:
            ev = events(r.text)
            texts = [e["choices"][0]["text"] for e in ev[:-1] if e["choices"][0]["finish_reason"] is None]
            assert ev[-1] == "[DONE]" and ev[-2]["choices"][0]["finish_reason"] == "length"
            return ev[0]["id"], len(texts) - n
        j = r.json()
        return j["id"], j["usage"]["completion_tokens"] - n

    async def main(url: str) -> list:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=WAIT_S, limits=limits) as client:
            return await asyncio.gather(*(one(client, url, i) for i in range(100)))

    with serving(CONFIG, ConstantCostModel(1.0), speedup=200) as (url, state):
        results = asyncio.run(main(url))
        metrics = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
    assert len({rid for rid, _ in results}) == 100 and all(missing == 0 for _, missing in results)
    expected_tokens = sum(1 + i % 7 for i in range(100))
    assert f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {float(expected_tokens)}' in metrics
    assert 'vllm:request_success_total{engine="0",model_name="m",finished_reason="length"} 100.0' in metrics
    assert 'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 100' in metrics
    assert f'vllm:inter_token_latency_seconds_count{{engine="0",model_name="m"}} {expected_tokens - 100}' in metrics
    assert not state.deployment.active


def test_refusals_are_openai_errors_and_the_server_keeps_serving():
    with serving(CONFIG, ConstantCostModel(1.0), speedup=200) as (url, _state):
        bad_json = httpx.post(f"{url}/v1/completions", content=b'{"prompt": "x"', timeout=WAIT_S)
        unknown = httpx.post(f"{url}/v1/chat/completions", timeout=WAIT_S,
                             json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
        too_long = httpx.post(f"{url}/v1/completions", timeout=WAIT_S,
                              json={"prompt": [1] * 4000, "max_tokens": 200})
        bad_field = httpx.post(f"{url}/v1/completions", timeout=WAIT_S, json={"prompt": "x", "max_tokens": -1})
        after = httpx.post(f"{url}/v1/completions", timeout=WAIT_S, json={"prompt": "x", "max_tokens": 1})
    for r, status in ((bad_json, 400), (unknown, 404), (too_long, 400), (bad_field, 400)):
        assert r.status_code == status
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    assert "malformed JSON" in bad_json.json()["error"]["message"]
    assert unknown.json()["error"]["message"] == "The model `gpt-4` does not exist."
    assert ("maximum context length is 4096 tokens. However, you requested 4200 tokens (4000 in the prompt, 200 in "
            "the completion)") in too_long.json()["error"]["message"]
    assert after.status_code == 200


def test_kv_capacity_refusal_names_the_reason():
    with serving(SimConfig(scheduler="sarathi", kv_blocks=4), ConstantCostModel(1.0), speedup=200) as (url, _s):
        r = httpx.post(f"{url}/v1/completions", timeout=WAIT_S, json={"prompt": [1] * 100, "max_tokens": 10})
    assert r.status_code == 400 and "kv_capacity" in r.json()["error"]["message"]


def test_health_models_and_metrics_of_one_request_by_hand():
    """Alone on a 1 s-an-iteration deployment, a request's first token comes 1 s (simulated) after it arrives and
    each next one 1 s later: TTFT 1 s, two gaps of 1 s, e2e 3 s."""
    with serving(CONFIG, ConstantCostModel(1.0), speedup=200, name="served") as (url, _state):
        health = httpx.get(f"{url}/health", timeout=WAIT_S)
        version = httpx.get(f"{url}/version", timeout=WAIT_S).json()
        models = httpx.get(f"{url}/v1/models", timeout=WAIT_S).json()
        httpx.post(f"{url}/v1/completions", timeout=WAIT_S, json={"model": "served", "prompt": [1] * 10,
                                                                  "max_tokens": 3})
        text = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
    assert health.status_code == 200 and version["server"] == "servesim"
    assert models["data"][0]["id"] == "served" and models["data"][0]["max_model_len"] == 4096

    def value(sample: str) -> float:
        m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
        assert m, sample
        return float(m.group(1))

    lab = 'engine="0",model_name="served"'
    assert value(f"vllm:time_to_first_token_seconds_sum{{{lab}}}") == pytest_approx(1.0)
    assert value(f"vllm:inter_token_latency_seconds_sum{{{lab}}}") == pytest_approx(2.0)
    assert value(f"vllm:e2e_request_latency_seconds_sum{{{lab}}}") == pytest_approx(3.0)
    assert value(f'vllm:inter_token_latency_seconds_bucket{{{lab},le="0.75"}}') == 0
    assert value(f'vllm:inter_token_latency_seconds_bucket{{{lab},le="+Inf"}}') == 2
    assert value(f"vllm:prompt_tokens_total{{{lab}}}") == 10
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert value(f"{gauge}{{{lab}}}") == 0  # all done: nothing running, waiting or holding blocks
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text


def pytest_approx(x: float):
    return pytest.approx(x, rel=1e-9)


def test_a_client_that_goes_away_mid_stream_stops_its_request():
    """1,000 tokens at 50 ms each (wall) would take 50 s; the client reads two and closes: the request ends at its
    next token (finish "abort"), is not counted as a success, and frees its KV blocks."""
    with serving(CONFIG, ConstantCostModel(1.0), speedup=20) as (url, state):
        with httpx.stream("POST", f"{url}/v1/completions", timeout=WAIT_S,
                          json={"prompt": [1] * 10, "max_tokens": 1000, "stream": True}) as r:
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: {")
                if got == 2:
                    break
        dep = state.deployment
        deadline = time.monotonic() + WAIT_S
        while dep.active and time.monotonic() < deadline:
            time.sleep(0.05)
        text = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
    assert not dep.active
    assert 'vllm:request_success_total{engine="0",model_name="m",finished_reason="length"} 0.0' in text
    assert 'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.0' in text
    generated = float(re.search(r'^vllm:generation_tokens_total\{[^}]*\} (\S+)$', text, re.MULTILINE).group(1))
    assert 2 <= generated < 1000
