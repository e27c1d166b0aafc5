"""``servesim serve`` as a command: SIGTERM (and SIGINT) mid-stream ends the stream cleanly and the process exits 0;
bad flags are one line and exit 2 before anything listens."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from tests.sim.serve.serving import WAIT_S, serve_process

httpx = pytest.importorskip("httpx")



@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_stream_ends_the_stream_with_abort_and_exits_cleanly(sig):
    # llama-2-7b on an A100 decodes in about 10 ms (simulated): 100,000 tokens would stream for minutes at speedup 1
    with serve_process("--scheduler", "sarathi", "--max-model-len", "200000") as (proc, url):
        chunks = []
        with httpx.stream("POST", f"{url}/v1/completions", timeout=WAIT_S,
                          json={"prompt": [1] * 8, "max_tokens": 100_000, "stream": True}) as r:
            for line in r.iter_lines():
                if not line:
                    continue
                chunks.append(line)
                if len(chunks) == 3:
                    proc.send_signal(sig)
        rc = proc.wait(WAIT_S)
        err = proc.stderr.read()
    assert rc == 0, err
    assert "Traceback" not in err and "servesim serve: stopped" in err
    assert chunks[-1] == "data: [DONE]"
    last = json.loads(chunks[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] == "abort"
    assert all(json.loads(c[6:])["choices"][0]["finish_reason"] is None for c in chunks[:-2])


def run_serve(capsys, *flags: str) -> tuple[int, str]:
    """``servesim serve FLAGS`` in this process (the refusals come before anything listens): (status, stderr)."""
    from sim.cli.main import main
    try:
        rc = main(["serve", *flags])
    except SystemExit as e:  # argparse's refusals
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("flags, fragment", [
    (("--port", "70000"), "--port"),
    (("--speedup", "0"), "--speedup"),
    (("--model", "no-such-model", "--port", "0"), "no-such-model"),
    (("--pp", "2", "--scheduler", "vllm_v1", "--async-scheduling", "--port", "0"), "async"),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, flags, fragment):
    rc, err = run_serve(capsys, *flags)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("servesim: error:") and fragment in lines[0]


def test_a_port_in_use_is_one_line_and_exit_2(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        rc, err = run_serve(capsys, "--port", str(s.getsockname()[1]))
    assert rc == 2 and "cannot listen on 127.0.0.1" in err and len(err.splitlines()) == 1


def test_deployment_files_aggregated_served_disaggregated_refused(tmp_path, capsys):
    from sim.cli.main import build_parser, main
    from sim.serve.cli import build_state

    agg = tmp_path / "agg.yaml"
    agg.write_text("model: llama-2-7b\ngpu: h100\nscheduler: vllm_v1\nkv_blocks: 500\nreplicas: 2\n")
    state = build_state(build_parser().parse_args(["serve", "--deployment", str(agg)]))
    dep = state.deployment
    assert (dep.config.gpu, dep.config.scheduler, dep.num_blocks, len(dep.schedulers)) == ("h100", "vllm_v1", 500, 2)
    assert state.model_name == "llama-2-7b"
    dis = tmp_path / "dis.yaml"
    dis.write_text("model: llama-2-7b\nmode: disaggregated\nprefill: {gpu: h100}\ndecode: {gpu: h100}\n")
    assert main(["serve", "--deployment", str(dis), "--port", "0"]) == 2
    assert "one aggregated deployment" in capsys.readouterr().err
