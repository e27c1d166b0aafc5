"""``servesim serve --engine``: the real engine (tiny model on the CPU) behind the same endpoint, found by name."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from tests.sim.serve.serving import WAIT_S, serve_process

httpx = pytest.importorskip("httpx")



def test_engine_serves_streamed_and_whole_answers_and_counts_them():
    with serve_process("--engine", "--model", "tiny", "--device", "cpu", "--kv-blocks", "256") as (proc, url):
        s = httpx.post(f"{url}/v1/completions", timeout=WAIT_S,
                       json={"prompt": [1] * 20, "max_tokens": 4, "stream": True})
        w = httpx.post(f"{url}/v1/chat/completions", timeout=WAIT_S,
                       json={"messages": [{"role": "user", "content": "x" * 12}], "max_tokens": 2})
        too_long = httpx.post(f"{url}/v1/completions", timeout=WAIT_S, json={"prompt": [1] * 5000})
        metrics = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
        proc.terminate()
        rc = proc.wait(WAIT_S)
    chunks = [line for line in s.text.split("\n\n") if line.strip()]
    assert len(chunks) == 6 and chunks[-1] == "data: [DONE]" and '"finish_reason":"length"' in chunks[-2]
    assert w.json()["choices"][0]["message"]["content"] == " tok tok"
    assert w.json()["usage"]["prompt_tokens"] == 3
    assert too_long.status_code == 400 and "maximum context length" in too_long.json()["error"]["message"]
    assert 'vllm:generation_tokens_total{engine="0",model_name="tiny"} 6.0' in metrics
    assert rc == 0


def test_engine_flags_that_only_a_simulation_has_are_refused(capsys):
    from sim.cli.main import main
    assert main(["serve", "--engine", "--model", "tiny", "--speedup", "10"]) == 2
    assert "drop --speedup" in capsys.readouterr().err
    assert main(["serve", "--device", "cpu"]) == 2
    assert "add --engine" in capsys.readouterr().err
