"""Benchmark clients' measured results, read for ``servesim validate --measured`` (and by anything else that
wants them as data: the endpoint tests import these readers to check a real client's round trip).

Public API:

- ``read_measured(path, stage=None) -> MeasuredRun``: the one run of a result (or its ``stage``-th load stage /
  benchmark when it holds several); ``read_measured_runs(path) -> list[MeasuredRun]``: every one.
- ``MeasuredRun``: the client's name and version, its metric definitions (``Definitions``), per-request records
  (``MeasuredRequest``: input and output tokens, send time, TTFT, latency, gaps between streamed tokens or
  chunks, success), its own summary figures (seconds), the load configuration and the deployment hints it records.

Formats (``FORMATS``), detected from the path: ``vllm bench serve --save-result [--save-detailed]`` JSON, an
inference-perf report folder, a GuideLLM JSON report, an AIPerf artifacts folder, and vLLM's per-request engine
timestamps (a folder of requests.jsonl + meta.json, or a tree of them). Errors are MeasuredError (a ValueError)
with one line naming the file, the line where known, and the field.
"""

from __future__ import annotations

from pathlib import Path

from sim.inputs import brief_name
from sim.measured.run import Definitions, MeasuredError, MeasuredRequest, MeasuredRun, read_json

__all__ = ["FORMATS", "Definitions", "MeasuredError", "MeasuredRequest", "MeasuredRun", "detect_format",
           "read_measured", "read_measured_runs"]

FORMATS = ("vllm-bench", "inference-perf", "guidellm", "aiperf", "vllm-engine")


def detect_format(path: str | Path) -> str:
    """Which client wrote ``path`` (one of FORMATS); MeasuredError when none fits."""
    from sim.measured import aiperf, guidellm, inference_perf, vllm_bench, vllm_engine
    p = Path(path)
    if not p.exists():
        raise MeasuredError(f"{brief_name(p)}: no such file or folder")
    if p.is_dir():
        if inference_perf.looks_like(p):
            return "inference-perf"
        if aiperf.looks_like(p):
            return "aiperf"
        if vllm_engine.run_folders(p):
            return "vllm-engine"
        raise MeasuredError(f"{brief_name(p)}: a folder, but not an inference-perf report (stage_N_lifecycle_metrics"
                            ".json), an AIPerf artifacts folder (profile_export.jsonl) or vLLM runs (requests.jsonl "
                            "+ meta.json)")
    if aiperf.looks_like(p):
        return "aiperf"
    if p.name == "requests.jsonl":
        return "vllm-engine"
    data = read_json(str(p), "benchmark result").data
    if vllm_bench.looks_like(data):
        return "vllm-bench"
    if guidellm.looks_like(data):
        return "guidellm"
    raise MeasuredError(f"{brief_name(p)}: not a result servesim reads (vllm bench serve JSON with mean_ttft_ms, or "
                        "a GuideLLM report with benchmarks)")


def read_measured_runs(path: str | Path) -> list[MeasuredRun]:
    """Every measured run in ``path`` (one per load stage, benchmark or vLLM run folder)."""
    from sim.measured import aiperf, guidellm, inference_perf, vllm_bench, vllm_engine
    fmt = detect_format(path)
    p = Path(path)
    if fmt == "vllm-engine" and p.is_file():
        p = p.parent
    reader = {"vllm-bench": vllm_bench.read_vllm_bench, "inference-perf": inference_perf.read_inference_perf,
              "guidellm": guidellm.read_guidellm, "aiperf": aiperf.read_aiperf,
              "vllm-engine": vllm_engine.read_vllm_engine}[fmt]
    return reader(str(p))


def read_measured(path: str | Path, stage: int | None = None) -> MeasuredRun:
    """The run of ``path``; with several (stages, benchmarks, run folders) the ``stage``-th (0-based) one."""
    runs = read_measured_runs(path)
    if stage is None:
        if len(runs) > 1:
            raise MeasuredError(f"{brief_name(path)}: holds {len(runs)} runs ({', '.join(r.label for r in runs[:5])}"
                                f"{', ...' if len(runs) > 5 else ''}): choose one with stage=0..{len(runs) - 1}")
        return runs[0]
    if not 0 <= stage < len(runs):
        raise MeasuredError(f"{brief_name(path)}: stage {stage} out of range (it holds {len(runs)} runs)")
    return runs[stage]
