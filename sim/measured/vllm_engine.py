"""Reader of vLLM's per-request engine timestamps: a run folder with ``meta.json`` and ``requests.jsonl`` (the
format of LLMServingSim's published vLLM 0.19 runs, ../shared/measured/vllm-e2e/; benchmarks/vllm_e2e.py reads
them through this module).

requests.jsonl: one object per request with input_toks, output_toks, arrival_time (API server, wall clock) and the
engine's queued_ts, scheduled_ts, first_token_ts, last_token_ts (engine monotonic clock). meta.json: the vLLM
version, engine_kwargs (model, parallelism, max_num_seqs, max_num_batched_tokens, max_model_len), kv_cache and
resolved_config when recorded, and dataset_path: the replayed workload (token ids, whose shared prefixes
prefix caching reuses). vLLM's own summary defines TTFT = first_token_ts - queued_ts, TPOT = (last_token_ts -
first_token_ts) / (output tokens - 1), E2E = last_token_ts - queued_ts, queue wait = scheduled_ts - queued_ts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sim.inputs import brief_name
from sim.measured.run import (
    Definitions,
    Fields,
    MeasuredError,
    MeasuredRequest,
    MeasuredRun,
    read_json,
    read_jsonl,
)

DEFINITIONS = Definitions(
    clock="engine",
    metrics=(("ttft", "ttft", "TTFT (engine)"), ("tpot", "tpot", "TPOT (engine)"), ("e2e", "e2e", "E2E (engine)"),
             ("queue", "queue", "queue wait (engine)")),
    percentile="numpy linear interpolation (numpy.percentile's default)",
    failed="a request without first and last token timestamps is left out",
    note="Times from the engine's timestamps: the API server is outside both sides")

#: Hugging Face model ids -> servesim's catalogue
MODELS = {"meta-llama/Llama-3.1-8B": "llama-3.1-8b", "Qwen/Qwen3-32B": "qwen3-32b",
          "Qwen/Qwen3-30B-A3B-Instruct-2507": "qwen3-30b-a3b"}
#: device names (meta.json's hardware.device_name) or the run's GPU folder -> servesim's catalogue; the RTX PRO
#: 6000 runs do not name the edition: taken as the Server Edition, whose kernel database AIConfigurator ships
GPUS = {"NVIDIA GeForce RTX 4090": "rtx-4090", "RTX4090": "rtx-4090", "RTXPRO6000": "rtx-pro-6000-server"}
RECORD_FIELDS = ("input_toks", "output_toks", "arrival_time", "queued_ts", "scheduled_ts", "first_token_ts",
                 "last_token_ts")


class NotExpressible(ValueError):
    """A measured deployment servesim cannot configure."""


@dataclass(frozen=True)
class EngineArgs:
    """The engine arguments of one run (meta.json; vLLM 0.19's defaults where it is silent)."""

    model: str
    tp: int
    dp: int
    expert_parallel: bool
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int | None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    async_scheduling: bool | None = None
    num_gpu_blocks: int | None = None  # what vLLM allocated (recorded for the RTX 4090 run only)


def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json, bounded and checked to hold engine_kwargs."""
    f = read_json(str(path), "vLLM run meta.json")
    f.sub("engine_kwargs")
    return f.data


def engine_args(meta: dict[str, Any], where: str = "meta.json") -> EngineArgs:
    """Parse meta.json's engine_kwargs, kv_cache and resolved scheduler config (errors name the field)."""
    f = Fields(where, meta)
    kw = f.sub("engine_kwargs")
    kv = f.sub("kv_cache", required=False) or Fields(where, {}, "kv_cache")
    sched = (meta.get("resolved_config") or {}).get("scheduler_config") or {}
    if not isinstance(kw.get("model"), str):
        raise kw.fail("model", "expected the model's name")
    return EngineArgs(model=kw.get("model"), tp=kw.integer("tensor_parallel_size", low=1),
                      dp=kw.integer("data_parallel_size", low=1),
                      expert_parallel=bool(kw.get("enable_expert_parallel")),
                      max_num_seqs=kw.integer("max_num_seqs", low=1),
                      max_num_batched_tokens=kw.integer("max_num_batched_tokens", low=1),
                      max_model_len=kw.integer("max_model_len", required=False, low=1),
                      block_size=kv.integer("block_size", required=False, low=1) or 16,
                      gpu_memory_utilization=kv.number("gpu_memory_utilization", required=False) or 0.9,
                      enable_prefix_caching=bool(kv.get("enable_prefix_caching", True)),
                      async_scheduling=sched.get("async_scheduling"),
                      num_gpu_blocks=kv.integer("num_gpu_blocks", required=False, low=1))


def read_requests_table(path: str | Path) -> pd.DataFrame:
    """requests.jsonl as a table (request_id and RECORD_FIELDS), every value checked (file:line: field)."""
    rows = []
    for rec in read_jsonl(str(path), "vLLM requests.jsonl"):
        row: dict[str, Any] = {"request_id": str(rec.get("request_id", f"line-{rec.line}"))}
        for k in ("input_toks", "output_toks"):
            row[k] = rec.integer(k, low=1 if k == "input_toks" else 0)
        for k in RECORD_FIELDS[2:]:
            row[k] = rec.number(k, required=k in ("arrival_time", "queued_ts"), low=-1e18)
        rows.append(row)
    return pd.DataFrame(rows, columns=["request_id", *RECORD_FIELDS]).astype({k: float for k in RECORD_FIELDS[2:]})


def read_prompts(path: str | Path) -> list[list[int]]:
    """The workload's prompts as token ids (its input_tok_ids)."""
    out = []
    for rec in read_jsonl(str(path), "vLLM run workload"):
        ids = rec.array("input_tok_ids")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise rec.fail("input_tok_ids", "expected a list of integer token ids")
        out.append(ids)
    return out


def block_hash_ids(prompts: list[list[int]], block_size: int) -> list[list[int]]:
    """Chained ids of each prompt's full blocks: equal ids mean equal tokens with an equal prefix (vLLM's block
    hashes, as small integers for servesim's ``hash_ids``)."""
    ids: dict[tuple[int, tuple[int, ...]], int] = {}
    out = []
    for toks in prompts:
        row, prev = [], -1
        for k in range(len(toks) // block_size):
            prev = ids.setdefault((prev, tuple(toks[k * block_size:(k + 1) * block_size])), len(ids))
            row.append(prev)
        out.append(row)
    return out


def deployment_of(a: EngineArgs, gpu: str | None) -> dict[str, Any]:
    """The SimConfig fields the engine arguments give (raises NotExpressible for DP x EP)."""
    if a.dp > 1 and a.expert_parallel:
        raise NotExpressible(f"DP{a.dp} x EP (TP{a.tp}): vLLM spreads the experts over the {a.dp * a.tp} GPUs of "
                             f"{a.dp} data-parallel engines that step together; servesim's EP group is the TP group "
                             "of one replica (ep = tp)")
    out: dict[str, Any] = {"tp": a.tp, "replicas": a.dp, "scheduler": "vllm_v1",
                           "token_budget": a.max_num_batched_tokens, "max_batch_size": a.max_num_seqs,
                           "max_model_len": a.max_model_len, "gpu_memory_utilization": a.gpu_memory_utilization,
                           "block_size": a.block_size, "enable_prefix_caching": a.enable_prefix_caching,
                           "frontend": "none"}  # arrivals are the engine's (queued_ts): no API server in front
    if a.model in MODELS:
        out["model"] = MODELS[a.model]
    if gpu:
        out["gpu"] = gpu
    if a.async_scheduling is not None:
        out["async_scheduling"] = a.async_scheduling
    return out


def _workload_file(folder: Path, dataset_path: Any) -> Path | None:
    """The workload meta.json names, relative to the run folder or one of its parents."""
    if not isinstance(dataset_path, str) or not dataset_path:
        return None
    for base in (folder, *list(folder.parents)[:3]):
        if (base / dataset_path).is_file():
            return base / dataset_path
    return None


def run_folders(path: Path) -> list[Path]:
    """The run folders at or below ``path`` (those holding requests.jsonl and meta.json), sorted."""
    if (path / "requests.jsonl").is_file():
        return [path]
    return sorted(p.parent for p in path.glob("*/*/requests.jsonl") if (p.parent / "meta.json").is_file()) or \
        sorted(p.parent for p in path.glob("*/requests.jsonl") if (p.parent / "meta.json").is_file())


def read_engine_run(folder: Path) -> MeasuredRun:
    """One run folder as a MeasuredRun on the engine's clock (arrivals = queued_ts)."""
    meta = read_meta(folder / "meta.json")
    a = engine_args(meta, brief_name(folder / "meta.json"))
    table = read_requests_table(folder / "requests.jsonl")
    wl = _workload_file(folder, meta.get("dataset_path"))
    notes, hashes = [], None
    if wl is not None:
        prompts = read_prompts(wl)
        if len(prompts) != len(table) or any(len(p) != n for p, n in zip(prompts, table["input_toks"])):
            raise MeasuredError(f"{brief_name(wl)}: its prompts do not match {brief_name(folder / 'requests.jsonl')}"
                                " (count or lengths differ)")
        hashes = block_hash_ids(prompts, a.block_size)
    else:
        notes.append("the workload's token ids were not found: prompts share no prefixes in the replay")
    t0 = float(table["queued_ts"].min())
    reqs = []
    for i, r in enumerate(table.itertuples()):
        ok = pd.notna(r.first_token_ts) and pd.notna(r.last_token_ts) and r.output_toks > 0
        if ok and not r.queued_ts <= r.first_token_ts <= r.last_token_ts:  # one engine clock: a corrupt record
            raise MeasuredError(f"{brief_name(folder / 'requests.jsonl')}: request {r.request_id}: fields "
                                "'queued_ts' <= 'first_token_ts' <= 'last_token_ts' do not hold")
        reqs.append(MeasuredRequest(
            input_tokens=int(r.input_toks), output_tokens=int(r.output_toks), send_time=r.queued_ts - t0,
            ttft=r.first_token_ts - r.queued_ts if ok else None, latency=r.last_token_ts - r.queued_ts if ok else None,
            queue=(r.scheduled_ts - r.queued_ts) if pd.notna(r.scheduled_ts) else None, success=bool(ok),
            hash_ids=tuple(hashes[i]) if hashes else None, hash_block_size=a.block_size))
    hw = meta.get("hardware") or {}
    gpu = GPUS.get(str(hw.get("device_name"))) or GPUS.get(folder.parent.name)
    try:
        dep, why = deployment_of(a, gpu), None
    except NotExpressible as e:
        dep, why = {}, str(e)
    if not gpu:
        notes.append("meta.json does not name a GPU servesim knows: give --gpu")
    return MeasuredRun(source=str(folder), format="vllm-engine", client="vLLM engine timestamps",
                       client_version=str(meta.get("vllm_version")) if meta.get("vllm_version") else None,
                       definitions=DEFINITIONS, requests=reqs,
                       load={"dataset": meta.get("dataset_path"), "num_prompts": len(reqs),
                             "seed": (meta.get("engine_kwargs") or {}).get("seed")},
                       deployment={"hf_model": a.model, **dep, **({"kv_blocks_measured": a.num_gpu_blocks}
                                                                  if a.num_gpu_blocks else {})},
                       label=f"{folder.parent.name}/{folder.name}", exact=True, not_expressible=why, notes=notes)


def read_vllm_engine(path: str | Path) -> list[MeasuredRun]:
    """Every run folder at or below ``path``."""
    folders = run_folders(Path(path))
    if not folders:
        raise MeasuredError(f"{brief_name(path)}: no requests.jsonl with a meta.json beside it")
    return [read_engine_run(f) for f in folders]
