"""Issue 34's speed work changes no result: every scheduler on six small deployments gives the same outputs.

Each case runs twice in this tree, with the fast paths (decode stretches, the caching block manager's shortcut for
requests that share nothing) and with the reference paths (iteration by iteration, full lookups), and the run
folders must be byte-identical (summary.json less ``versions``); the CSV tables are also checked against
``DataFrame.to_csv``. The engine's replay shares the schedulers: its decisions (each batch's composition, each
request's tokens and preemptions) must not depend on the shortcuts either.

Against the tree before issue 34: ``python tests/sim/serving/test_speed_exact.py [--engine]`` prints digests of
requests.csv and summary.json (less ``versions``) for every case, from whatever ``sim`` is first on PYTHONPATH;
run it with a worktree of commit c2c8eda and with this tree (results/sim_speed.md lists both runs).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

SCHEDULERS = ("faster_transformer", "orca", "vllm", "sarathi", "vllm_v1")
COMMON = ["--model", "llama-2-7b", "--gpu", "a100-80gb", "-n", "30", "--qps", "20", "--seed", "3",
          "--prompt-len", "uniform:20:600", "--output-len", "uniform:2:80", "-q"]
CASES: dict[str, list[str]] = {
    "one_replica": [],
    "pp2_x2": ["--pp", "2", "--replicas", "2"],
    # round-robin replicas advance stretches apart (``Replica.independent``); rows are put in time order after
    "round_robin_x3": ["-n", "60", "--qps", "30", "--replicas", "3"],
    "round_robin_caching_x2": ["--replicas", "2", "--enable-prefix-caching", "--system-prompt", "160:0.5"],
    "least_outstanding_x2": ["--replicas", "2", "--router", "least_outstanding"],  # a router that looks: no stretches
    "kv_starved": ["--kv-blocks", "70", "--max-model-len", "700"],
    "prefix_caching": ["--enable-prefix-caching", "--sessions", "3", "--system-prompt", "160"],
    "prefix_caching_starved": ["--enable-prefix-caching", "--system-prompt", "160:0.5", "--kv-blocks", "70",
                               "--max-model-len", "700"],
    # reuse from sessions beside requests that share nothing, ShareGPT lengths, a cache that evicts: a waiting
    # request that shares nothing may hold a stretch's queue (``Scheduler.waiting_head_blocked``)
    "prefix_caching_sessions": ["-n", "200", "--prompt-len", "sharegpt", "--output-len", "sharegpt",
                                "--enable-prefix-caching", "--sessions", "10", "--system-prompt", "400:0.7",
                                "--kv-blocks", "300"],
    "serial_loop": ["--no-async-scheduling"],  # vllm_v1's default engine loop is async (no stretches there)
    # a model whose steps are shorter than their host work: the async loop's steps start as that work ends
    "host_exposed": ["--model", "tiny", "--gpu", "h100"],
    "disaggregated": ["--disaggregated", "--prefill-replicas", "1", "--decode-replicas", "2"],
    # the kernel-database model prices decode stretches in one call and counts each distinct price it looks up
    "kernels_starved": ["--cost-model", "kernels", "--kv-blocks", "70", "--max-model-len", "700",
                        "--token-budget", "64"],
    # every request arrived at once: stretches with no arrival ahead price all their runs of steps in one pass
    "kernels_burst": ["--cost-model", "kernels", "--qps", "5000"],
}
NEEDS_KERNELS = ("kernels_starved", "kernels_burst")
#: cases that must advance at least one stretch, with every scheduler (one replica, one stage)
STRETCHED = ("one_replica", "host_exposed", "kv_starved", "prefix_caching", "prefix_caching_starved",
             "prefix_caching_sessions", "serial_loop", "kernels_starved", "kernels_burst", "round_robin_x3",
             "round_robin_caching_x2")
#: cases where no stretch may run (several replicas that a router reads)
UNSTRETCHED = ("least_outstanding_x2",)
ENGINE = ["--model", "tiny", "--device", "cpu", "--offline", "--warmup", "0", "-n", "10", "--seed", "3",
          "--prompt-len", "uniform:8:40", "--output-len", "uniform:2:12", "--kv-blocks", "12", "--max-batch", "6",
          "--max-model-len", "64",
          "-q"]
CHUNKING = ("sarathi", "vllm_v1")  # given a token budget smaller than the prompts, so that they chunk
ENGINE_REQUEST_COLUMNS = ("request_id", "prompt_tokens", "output_tokens", "generated_tokens", "num_preemptions")
ENGINE_BATCH_COLUMNS = ("batch_id", "num_prefill_tokens", "num_decode_tokens", "batch_size", "num_prefill_items",
                        "kv_blocks_used")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_case(case: str, scheduler: str, out: Path) -> str:
    """Simulate one case into ``out``; the digest of its requests.csv and summary.json (less versions)."""
    from sim.cli.main import main

    extra = CASES[case]
    if case == "disaggregated":
        decode = "sarathi" if scheduler == "faster_transformer" else scheduler  # FT cannot take KV mid-batch
        sched = ["--prefill-scheduler", scheduler, "--decode-scheduler", decode]
    else:
        sched = ["--scheduler", scheduler]
    assert main(["simulate", *COMMON, *extra, *sched, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("versions", None)
    return _digest((out / "requests.csv").read_text() + json.dumps(summary, sort_keys=True))


def run_engine(scheduler: str, out: Path) -> str:
    """Replay a tiny trace on the CPU engine; the digest of what its scheduler decided (no times)."""
    from sim.cli.main import main

    budget = ["--token-budget", "24"] if scheduler in CHUNKING else []
    assert main(["engine", *ENGINE, *budget, "--scheduler", scheduler, "--out", str(out)]) == 0
    req = pd.read_csv(out / "requests.csv", dtype={"request_id": str})[list(ENGINE_REQUEST_COLUMNS)]
    bat = pd.read_csv(out / "batches.csv")[list(ENGINE_BATCH_COLUMNS)]
    return _digest(req.to_csv(index=False) + bat.to_csv(index=False))


def _same_as_pandas(out: Path) -> None:
    """Every table of the run folder is what ``DataFrame.to_csv`` writes for the frame read back from it."""
    from sim.outputs.run_folder import FLOAT_FORMAT
    from sim.outputs.tables import csv_text

    for name in ("requests.csv", "batches.csv"):
        text = (out / name).read_text()
        frame = pd.read_csv(io.StringIO(text), dtype={"request_id": str} if name == "requests.csv" else None)
        assert csv_text(frame, FLOAT_FORMAT) == frame.to_csv(index=False, float_format=FLOAT_FORMAT,
                                                             lineterminator="\n")


def _kernels_or_skip() -> None:
    pytest.importorskip("pyarrow")
    from sim.cost.kernels import database as db

    try:
        db.data_dir()
    except db.KernelDatabaseError:
        pytest.skip("aiconfigurator-core is not installed (pip install -e '.[kernels]')")


@pytest.fixture
def reference_paths(monkeypatch):
    """Switch issue 34's shortcuts off: the slow paths every fast one must agree with."""
    from sim.kv.prefix_cache import CachingBlockManager
    from sim.serving.cluster import Replica

    def off():
        monkeypatch.setattr(Replica, "decode_stretches", False)
        monkeypatch.setattr(CachingBlockManager, "skip_no_reuse", False)
    return off


def _folder_bytes(out: Path) -> dict[str, str]:
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("versions", None)
    return {"summary": json.dumps(summary, sort_keys=True), "requests": (out / "requests.csv").read_text(),
            "batches": (out / "batches.csv").read_text()}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_simulation_outputs_are_the_same_with_and_without_the_shortcuts(case, scheduler, tmp_path, reference_paths,
                                                                        monkeypatch):
    from sim.serving import stretch

    if case in NEEDS_KERNELS:
        _kernels_or_skip()
    stretched = []
    real = stretch.run_stretch

    def counted(*a):
        done = real(*a)
        stretched.append(done is not None)
        return done
    monkeypatch.setattr(stretch, "run_stretch", counted)
    passes = []  # the kernels model's one-pass pricing of several runs of steps (``decode_runs``)
    if case == "kernels_burst":
        from sim.cost.kernels.model import KernelCostModel
        from sim.cost.kernels.run_pricing import VECTOR_STEPS
        runs_of = KernelCostModel.decode_runs

        def priced(self, runs):
            passes.append(len(runs) > 1 and sum(r[2] for r in runs) >= VECTOR_STEPS)
            return runs_of(self, runs)
        monkeypatch.setattr(KernelCostModel, "decode_runs", priced)
    from sim.serving.recorder import Recorder
    ties, take = [], Recorder.take_tables

    def taken(self):
        frames = take(self)
        ties.append(self.ambiguous)
        return frames
    monkeypatch.setattr(Recorder, "take_tables", taken)
    run_case(case, scheduler, tmp_path / "fast")
    assert ties and not any(ties), "no rows should tie here (a tie reruns without stretches: nothing compared)"
    if case == "kernels_burst":
        assert any(passes), "this case should price several runs of steps in one pass"
    _same_as_pandas(tmp_path / "fast")
    reference_paths()
    run_case(case, scheduler, tmp_path / "reference")
    assert _folder_bytes(tmp_path / "fast") == _folder_bytes(tmp_path / "reference")
    if case in STRETCHED:
        assert any(stretched), "this case should advance decode stretches"
    if case in UNSTRETCHED:
        assert not any(stretched), "no stretch may run here"


@pytest.mark.parametrize("scheduler", ["vllm_v1"])  # the engine has its own loop: only the caching shortcut acts there
def test_engine_replay_decisions_are_the_same_with_and_without_the_shortcuts(scheduler, tmp_path, reference_paths):
    pytest.importorskip("torch")
    fast = run_engine(scheduler, tmp_path / "fast")
    reference_paths()
    assert run_engine(scheduler, tmp_path / "reference") == fast


if __name__ == "__main__":  # print the digests of the ``sim`` on sys.path (see the module docstring)
    import contextlib
    import tempfile

    real = sys.stdout
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        for case in sorted(CASES):
            for s in SCHEDULERS:
                print(f'    "{case}/{s}": "{run_case(case, s, Path(tmp) / case / s)}",', file=real, flush=True)
        if "--engine" in sys.argv:
            for s in SCHEDULERS:
                print(f'    "engine/{s}": "{run_engine(s, Path(tmp) / "engine" / s)}",', file=real, flush=True)


def test_the_direct_csv_writer_writes_pandas_bytes_on_awkward_values():
    """NaN (empty), infinities, -0, tiny and huge floats, int64 extremes, booleans, None and empty strings;
    a string needing quotes, or numbers in an object column, go through pandas itself."""
    import numpy as np

    from sim.outputs.tables import csv_text

    x = [0.1, float("nan"), float("inf"), -float("inf"), -0.0, 5e-324, 1.7976931348623157e308, 123456789.123, 3.0]
    frames = [
        pd.DataFrame({"f": x, "i": np.array([2**62, -2**62, 0, 1, -1, 7, 8, 9, 10], dtype=np.int64),
                      "b": [True, False] * 4 + [True],
                      "s": pd.array(["a", None, "", "b c", "d", "e", "f", "g", "h"], dtype="string"),
                      "o": ["x", None, float("nan"), "", "y", "z", "w", "v", "u"]}),
        pd.DataFrame({"s": ["a,b", 'q"', "ok"], "n": [1, 2, 3]}),  # quoted: pandas' path
        pd.DataFrame({"o": [1, "a", 2.5], "n": [1, 2, 3]}),  # mixed object column: pandas' path
        pd.DataFrame({"f": np.float32([1.1, 2.2]), "n": [1, 2]}),
        pd.DataFrame({"a": [], "b": []}),
        pd.DataFrame({"only": [1.5, float("nan")]}),  # one column: pandas quotes an empty field
        pd.DataFrame({"i": np.arange(20001) - 7, "f": np.linspace(-3.3, 1e9, 20001),  # numbers only: several
                      "b": np.arange(20001) % 3 == 0, "g": np.float32(np.linspace(0, 1, 20001))}),  # %-blocks
    ]
    for frame in frames:
        assert csv_text(frame, "%.9g") == frame.to_csv(index=False, float_format="%.9g", lineterminator="\n")


def test_parquet_run_folders_hold_the_same_tables_and_feed_timelines_and_reports(tmp_path):
    pytest.importorskip("pyarrow")
    from sim.cli.main import main
    from sim.outputs.run_folder import check_run, read_run

    args = ["simulate", *COMMON, "--scheduler", "sarathi"]
    assert main([*args, "--out", str(tmp_path / "csv")]) == 0
    assert main([*args, "--out", str(tmp_path / "pq"), "--format", "parquet", "--timeline"]) == 0
    assert not (tmp_path / "pq" / "requests.csv").exists() and check_run(tmp_path / "pq")
    s1, r1, b1 = read_run(tmp_path / "csv")
    s2, r2, b2 = read_run(tmp_path / "pq")
    assert s1 == s2
    assert r1.columns.tolist() == r2.columns.tolist() and b1.columns.tolist() == b2.columns.tolist()
    # the CSV holds 9 significant digits, Parquet every bit: equal to that precision
    pd.testing.assert_frame_equal(r1, r2, check_dtype=False, rtol=1e-8)
    pd.testing.assert_frame_equal(b1, b2, check_dtype=False, rtol=1e-8)
    assert main(["report", str(tmp_path / "csv"), str(tmp_path / "pq"), "--out", str(tmp_path / "rep")]) == 0


def test_kernels_decode_attention_prices_exactly_as_the_grid_it_reads():
    """The memoised row search of ``DecodeAttention`` gives ``Grid2D``'s floats and edge flags bit for bit."""
    import numpy as np

    pytest.importorskip("aiconfigurator_core")
    from sim.cost.kernels.lookups import EDGE
    from sim.cost.kernels.model import KernelCostModel

    for model, tp in (("llama-2-7b", 1), ("llama-3.1-70b", 4)):
        dec = KernelCostModel(model, "a100-80gb", tp=tp)._decode
        if dec is None:
            continue
        rng = np.random.default_rng(0)
        for n in [1, 2, 3, 5, 7, 8, 13, 64, 100, 257, 600, 2000, *rng.integers(1, 3000, 200).tolist()]:
            for ctx in (1, 17, 500, 4096, 40000, int(rng.integers(1, 60000))):
                total = n * ctx + int(rng.integers(0, n))
                t, src = dec(n, total)
                b, v = float(n * dec.fold), total / n
                assert t == dec.grid(b, v)
                assert src == (dec.source if dec.grid.contains(b, v) else dec.source + EDGE)
