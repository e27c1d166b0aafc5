"""How closely a real benchmark client's measurements of ``servesim serve`` follow what servesim predicts for the
same run: the noise the round-trip test's tolerance is derived from (tests/sim/serve/test_guidellm_roundtrip.py).

Each round trip starts ``servesim serve --record`` as a subprocess on a free port, runs GuideLLM (the PyPI client,
offline, with a byte-level tokenizer made here: no download) against it at a fixed concurrency, reads GuideLLM's
JSON report with ``sim.measured``'s reader, and replays the requests the server recorded through ``simulate`` with
the same flags: the prediction. Per request it compares the client's TTFT and mean ITL (GuideLLM's definitions)
with the predicted ones divided by the speedup (wall seconds). The differences are what HTTP, the event loop's
lateness and the client's own timing add; ``--load N`` runs N busy-looping processes beside them, as a loaded CI
machine would. The figures are wall-clock measurements on the machine it runs on; nothing here is simulated except
the prediction. Figures and what they show: results/serve_noise.md.

    python benchmarks/serve_noise.py                     # idle and loaded, two speedups
    python benchmarks/serve_noise.py --load 0 --speedup 0.05 --requests 16
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the deployment of every round trip (llama-2-7b on one A100, Sarathi-Serve; roofline prices; frontend none)
FLAGS = ("--model", "llama-2-7b", "--gpu", "a100-80gb", "--scheduler", "sarathi")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
WAIT_S = 300


def make_tokenizer(folder: Path) -> Path:
    """A byte-level tokenizer (each UTF-8 byte one token) saved for ``transformers.AutoTokenizer``: GuideLLM needs
    one to write prompts of a given length, and none can be downloaded here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))
    return folder


def start_server(flags: tuple[str, ...], record: Path) -> tuple[subprocess.Popen, str]:
    """``servesim serve --port 0 --record RECORD FLAGS`` and its base URL (read from its start line)."""
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli.main", "serve", "--port", "0", "--record", str(record),
                             *flags], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", first)
    if not m:
        proc.kill()
        raise RuntimeError(f"servesim serve did not start: {first}{proc.stderr.read()}")
    return proc, f"http://127.0.0.1:{m.group(1)}"


def run_guidellm(url: str, out: Path, tokenizer: Path, requests: int, concurrency: int, prompt_bytes: int,
                 output_tokens: int) -> None:
    """GuideLLM's ``run``: ``requests`` chat requests at ``concurrency`` streams, synthetic prompts of
    ``prompt_bytes`` bytes, ``output_tokens`` each (it sends max_completion_tokens and ignore_eos)."""
    cmd = ["guidellm", "run", "--backend", f"kind=openai_http,target={url}",
           "--profile", f"kind=concurrent,streams={concurrency}",
           "--constraint", f"kind=max_requests,count={requests}",
           "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
           "--data", f"kind=synthetic_text,prompt_tokens={prompt_bytes},output_tokens={output_tokens}",
           "--output", f"kind=json,path={out}", "--disable-console-interactive"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, check=False, env={**os.environ, **OFFLINE},
                       cwd=out.parent)
    if r.returncode != 0 or not out.is_file():
        raise RuntimeError(f"guidellm failed ({r.returncode}): {r.stderr[-2000:]}{r.stdout[-2000:]}")


def predicted(flags: tuple[str, ...], records: list[dict]) -> dict[str, tuple[float, float]]:
    """What ``simulate`` predicts (simulated seconds) for the recorded arrivals on the deployment ``flags`` give:
    request id -> (TTFT, mean gap between tokens)."""
    from sim.cli.main import build_parser
    from sim.request import TraceRequest
    from sim.serve.cli import build_state
    from sim.serving.simulator import simulate

    dep = build_state(build_parser().parse_args(["serve", *flags])).deployment
    trace = [TraceRequest(x["request_id"], x["arrival_time"], x["prompt_tokens"], x["output_tokens"])
             for x in records]
    frame = simulate(trace, dep.config, cost_model=dep.cost).requests.set_index("request_id")
    return {rid: (row["ttft"], row["tpot"]) for rid, row in frame.iterrows()}


def client_view(report: Path) -> list[dict]:
    """Per successful request of GuideLLM's report: response id, TTFT and mean ITL (seconds), tokens.

    Figures through ``sim.measured``'s reader (GuideLLM's definitions); the response ids, which it does not keep, read
    from the same list in the same order."""
    from sim.measured import read_measured

    run = read_measured(report)
    raw = json.loads(report.read_text())["benchmarks"][0]["requests"]["successful"]
    ok = [r for r in run.requests if r.success]
    assert len(ok) == len(raw), "the reader and the report disagree on the successful requests"
    rows = []
    for rec, r in zip(raw, ok):
        itl = r.gaps[0] / (r.output_tokens - 1) if r.gaps and r.output_tokens > 1 else math.nan
        rows.append({"id": rec["response_id"], "ttft": r.ttft, "itl": itl, "output_tokens": r.output_tokens,
                     "input_tokens": r.input_tokens})
    return rows


def round_trip(workdir: Path, speedup: float, requests: int = 12, concurrency: int = 3, prompt_bytes: int = 256,
               output_tokens: int = 16) -> dict:
    """One GuideLLM run against ``servesim serve --speedup``; per request the client's and the predicted TTFT and
    ITL in wall seconds, and what each side counted."""
    flags = (*FLAGS, "--speedup", repr(speedup))
    tokenizer = workdir / "tokenizer"
    if not tokenizer.is_dir():
        make_tokenizer(tokenizer)
    record = workdir / f"served-{speedup}.jsonl"
    report = workdir / f"guidellm-{speedup}.json"
    record.unlink(missing_ok=True)
    proc, url = start_server(flags, record)
    try:
        run_guidellm(url, report, tokenizer, requests, concurrency, prompt_bytes, output_tokens)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(WAIT_S)
    records = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    pred = predicted(flags, records)
    served = {x["request_id"]: x for x in records}
    rows = []
    for c in client_view(report):
        rid = c["id"].rsplit("-", 1)[1]
        ttft, tpot = pred[rid]
        rows.append({**c, "pred_ttft": ttft / speedup, "pred_itl": tpot / speedup,
                     "served_tokens": served[rid]["output_tokens"]})
    return {"speedup": speedup, "server_exit": rc, "requests_sent": requests, "served": len(records),
            "finished": sum(x["finish_reason"] == "length" for x in records), "rows": rows}


def errors(result: dict) -> dict[str, np.ndarray]:
    """Client minus predicted, per request: TTFT and ITL in seconds, and relative to the prediction."""
    rows = result["rows"]
    out = {}
    for key in ("ttft", "itl"):
        client = np.array([r[key] for r in rows])
        pred = np.array([r[f"pred_{key}"] for r in rows])
        out[key] = client - pred
        out[f"{key}_rel"] = (client - pred) / pred
    return out


def _spin(stop: float) -> None:
    while time.monotonic() < stop:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--speedup", type=float, nargs="+", default=[0.5, 0.05])
    p.add_argument("--load", type=int, nargs="+", default=[0, 2], help="busy-looping processes beside the run")
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--concurrency", type=int, default=3)
    args = p.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs; deployment {' '.join(FLAGS)}; GuideLLM {args.requests} requests at "
          f"{args.concurrency} streams, 256-byte prompts (64 tokens by serve's rule), 16 output tokens")
    print("errors are client-measured minus predicted, wall milliseconds (relative: of the prediction)")
    with tempfile.TemporaryDirectory() as tmp:
        for load in args.load:
            for speedup in args.speedup:
                spinners = [multiprocessing.Process(target=_spin, args=(time.monotonic() + 600,))
                            for _ in range(load)]
                for s in spinners:
                    s.start()
                try:
                    t0 = time.perf_counter()
                    res = round_trip(Path(tmp), speedup, args.requests, args.concurrency)
                    wall = time.perf_counter() - t0
                finally:
                    for s in spinners:
                        s.terminate()
                        s.join()
                e = errors(res)
                pred_ttft = np.median([r["pred_ttft"] for r in res["rows"]]) * 1e3
                pred_itl = np.median([r["pred_itl"] for r in res["rows"]]) * 1e3
                print(f"\nload {load}, speedup {speedup:g}: {res['served']}/{res['requests_sent']} served, "
                      f"{len(res['rows'])} in the report, server exit {res['server_exit']}, {wall:.1f} s wall; "
                      f"predicted median TTFT {pred_ttft:.1f} ms, ITL {pred_itl:.2f} ms")
                for key in ("ttft", "itl"):
                    d, rel = e[key] * 1e3, e[f"{key}_rel"]
                    print(f"  {key.upper():5s} error ms: median {np.median(d):+.2f}  p95 {np.percentile(d, 95):+.2f}"
                          f"  min {d.min():+.2f}  max {d.max():+.2f}   |relative| max {np.abs(rel).max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
