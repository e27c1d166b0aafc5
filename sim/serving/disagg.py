"""Disaggregated prefill and decode (Splitwise, DistServe, Mooncake, Dynamo): two pools and a KV transfer.

A request prefills on a replica of the prefill pool, as that pool's scheduler batches it (chunked or
not), and produces its first token there. Then a decode replica is chosen (least KV in use, or fewest
running requests); the request waits until that replica admits it (blocks for its whole context,
watermark and batch cap as for a new request), its KV moves over the link, the prefill replica frees
its blocks, and it decodes on the decode replica. Each pool's scheduler is the existing policy code.

The link: each prefill replica's outbound path is one simpy resource, so transfers from it queue. A
transfer carries the prompt's KV (all layers; ``ModelSpec.kv_values_per_token_layer`` x dtype bytes,
MLA's latent once) over ``min(prefill GPUs, decode GPUs)`` parallel GPU-to-GPU streams (each GPU of a
TP x PP replica holds its shard and has its own NVLink port or NIC; when the TP degrees differ, the
shards regroup and the narrower side sets the stream count), at the link's per-GPU bandwidth plus a
fixed latency. With ``overlap`` the transfer runs layer by layer during the prefill and only the last
layer's share remains after it (this assumes the link keeps up with the prefill).

TTFT ends at the first token on the prefill side; the first gap between tokens includes the
admission wait and the transfer; E2E ends on the decode side.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim import metrics
from sim.catalog.hardware import get_gpu
from sim.cost.interface import CostModel
from sim.cost.roofline import NVLINK_COMM_LATENCY_S
from sim.gap_log import GapLog
from sim.request import Request, TraceRequest
from sim.schedulers import scheduler_class
from sim.serving.cluster import Replica, Router, replay_arrivals
from sim.serving.recorder import Recorder
from sim.serving.simulator import SimConfig, SimResult, _versions, add_cache_outputs, bound_memory
from sim.table import Table, column
from sim.workload.servable import rebase_arrivals

LINK_KINDS = ("network", "nvlink")
DECODE_ROUTERS = ("least_kv", "least_running")
NETWORK_LATENCY_S = 10e-6  # one RDMA write over InfiniBand/RoCE, a few microseconds plus software


@dataclass
class LinkConfig:
    """The path KV takes from the prefill pool to the decode pool."""

    kind: str = "network"              # network: the GPUs' NICs (across nodes); nvlink: within one node
    bandwidth: float | None = None     # bytes/s per GPU; default: the prefill GPU's network_bw or interconnect_bw
    latency_s: float | None = None     # default: 10 us (network), the NVLink collective latency (nvlink)
    overlap: bool = False              # transfer layer by layer during the prefill

    def __post_init__(self) -> None:
        if self.kind not in LINK_KINDS:
            raise ValueError(f"link kind must be one of {', '.join(LINK_KINDS)}, got {self.kind!r}")
        if self.bandwidth is not None and not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ValueError(f"link bandwidth must be a positive number of bytes/s, got {self.bandwidth}")
        if self.latency_s is not None and not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ValueError(f"link latency must be >= 0 seconds, got {self.latency_s}")

    def rate_and_latency(self, gpu: str) -> tuple[float, float]:
        """(bytes/s per GPU stream, seconds per transfer) on the prefill pool's GPU."""
        g = get_gpu(gpu)
        bw = self.bandwidth or (g.network_bw if self.kind == "network" else g.interconnect_bw)
        lat = self.latency_s if self.latency_s is not None else (NETWORK_LATENCY_S if self.kind == "network"
                                                                  else NVLINK_COMM_LATENCY_S)
        return bw, lat


@dataclass
class DisaggConfig:
    """A disaggregated deployment: a prefill pool, a decode pool (each a SimConfig of one pool), the link."""

    prefill: SimConfig
    decode: SimConfig
    link: LinkConfig = field(default_factory=LinkConfig)
    decode_router: str = "least_kv"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prefill.model != self.decode.model or self.prefill.max_model_len != self.decode.max_model_len:
            raise ValueError("the prefill and decode pools must serve the same model")
        if scheduler_class(self.decode.scheduler).name == "faster_transformer":
            raise ValueError("faster_transformer cannot be a decode pool's policy: its batches run to completion "
                             "before anyone joins, and KV arrives from the prefill pool at any time")
        if any(p.async_scheduling for p in (self.prefill, self.decode)):
            raise ValueError("async scheduling is modelled for aggregated vllm_v1 replicas; disaggregated pools run "
                             "the serial engine loop: drop async_scheduling")
        if any(p.frontend not in (None, "none") for p in (self.prefill, self.decode)):
            raise ValueError("a frontend is modelled for aggregated deployments; disaggregated runs report the "
                             "engines' own times: drop frontend")
        if self.decode_router not in DECODE_ROUTERS:
            raise ValueError(f"decode router must be one of {', '.join(DECODE_ROUTERS)}, got {self.decode_router!r}")

    @property
    def num_gpus(self) -> int:
        return sum(p.replicas * p.tp * p.pp for p in (self.prefill, self.decode))

    @property
    def label(self) -> str:
        """E.g. '3x a100-80gb: prefill 1x TP2 vllm, decode 1x TP1 vllm'."""
        def pool(c: SimConfig) -> str:
            budget = f" budget {c.token_budget}" if c.token_budget else ""
            ep = f" EP{c.ep}" if c.ep > 1 else ""
            return f"{c.replicas}x TP{c.tp}{ep}{f' PP{c.pp}' if c.pp > 1 else ''} {c.scheduler}{budget}"
        return f"{self.num_gpus}x {self.prefill.gpu}: prefill {pool(self.prefill)}, decode {pool(self.decode)}"

    def model_spec(self):
        return self.prefill.model_spec()

    def check(self) -> None:
        """Raise what a simulation would (unknown model or GPU, weights that do not fit in either pool)."""
        self.prefill.check()
        self.decode.check()

    def transfer_time(self, prompt_tokens: int, overlapped: bool | None = None) -> float:
        """Seconds the KV of ``prompt_tokens`` takes over the link after the prefill (latency included); with
        ``overlapped`` False (default: the link's setting) the whole transfer."""
        model = self.model_spec()
        p, d = self.prefill, self.decode
        from sim.catalog.models import kv_dtype_bytes
        nbytes = prompt_tokens * model.num_layers * model.kv_values_per_token_layer(1) * kv_dtype_bytes(
            p.kv_cache_dtype)
        rate, latency = self.link.rate_and_latency(p.gpu)
        streams = min(p.tp * p.pp, d.tp * d.pp)
        t = nbytes / (rate * streams)
        overlap = self.link.overlap if overlapped is None else overlapped
        return latency + (t / model.num_layers if overlap else t)


class _Disaggregated:
    """The simpy run of a disaggregated deployment: two pools of Replicas, transfers between them."""

    def __init__(self, env, config: DisaggConfig, pre_scheds, dec_scheds, pre_cost: CostModel,
                 dec_cost: CostModel, rec: Recorder) -> None:
        self.env, self.config, self.rec = env, config, rec
        P = len(pre_scheds)
        self.prefill = [Replica(env, i, s, pre_cost, config.prefill.pp, rec, self._prefilled)
                        for i, s in enumerate(pre_scheds)]
        self.decode = [Replica(env, P + i, s, dec_cost, config.decode.pp, rec, self._decoded)
                       for i, s in enumerate(dec_scheds)]
        for r in self.prefill:
            r.scheduler.hold_finished = True
        import simpy
        self.links = [simpy.Resource(env, capacity=1) for _ in self.prefill]
        self.freed = [env.event() for _ in self.decode]
        self.router = Router(self.prefill, config.prefill.router, config.prefill.router_cache_weight)
        self.final: dict[int, Request] = {}  # trace index -> the request object that ends its life
        self.outputs: dict[int, int] = {}    # trace index -> output tokens, while it prefills
        self.prefill_copy: dict[int, Request] = {}  # trace index -> its prefill-side request (its cache hit)
        self.transfers: list[tuple] = []  # (index, prefilled, admitted, start, end, decode replica, prefill replica)
        self.link_busy = [0.0] * len(self.prefill)

    def submit(self, original: Request) -> None:
        """A request arrives: its prefill-side copy (one output token) goes to a prefill replica."""
        pre = Request(original.request_id, original.arrival_time, original.prompt_tokens, 1, index=original.index,
                      prefix=original.prefix)
        self.final[original.index] = pre
        self.prefill_copy[original.index] = pre
        self.outputs[original.index] = original.output_tokens
        self.router.route(pre).submit(pre)

    def _prefilled(self, replica: Replica, finished: list[Request]) -> None:
        for pre in finished:
            outputs = self.outputs.pop(pre.index)
            if outputs > 1:
                self.env.process(self._move(replica, pre, outputs))
            else:  # one output token: done on the prefill side
                replica.scheduler.release(pre)
                replica._wake()

    def _pick_decode(self, req: Request) -> int:
        if self.config.decode_router == "least_running":
            return min(range(len(self.decode)), key=lambda i: (len(self.decode[i].scheduler.running)
                                                                + self.decode[i].scheduler.num_incoming))
        return min(range(len(self.decode)), key=lambda i: self.decode[i].scheduler.bm.num_used)

    def _move(self, src: Replica, pre: Request, outputs: int):
        """Admission on a decode replica, the transfer over ``src``'s link, then decoding there."""
        env = self.env
        prefilled = env.now
        dec = Request(pre.request_id, pre.arrival_time, pre.prompt_tokens, outputs, index=pre.index,
                      prefix=pre.prefix, num_computed=pre.prompt_tokens, num_generated=1,
                      first_scheduled_time=pre.first_scheduled_time, first_token_time=pre.first_token_time,
                      num_preemptions=pre.num_preemptions)
        dec.token_times = list(pre.token_times)
        i = self._pick_decode(dec)
        dst = self.decode[i]
        while not dst.scheduler.reserve(dec):
            if not self.freed[i].triggered:
                yield self.freed[i]
            self.freed[i] = env.event() if self.freed[i].triggered else self.freed[i]
        admitted = env.now
        dst.outstanding += 1
        dec.replica = dst.index
        link = self.links[src.index]
        with link.request() as lease:
            yield lease
            start = env.now
            yield env.timeout(self.config.transfer_time(pre.prompt_tokens))
            # with overlap the earlier layers moved during the prefill: the link carried all of them
            self.link_busy[src.index] += self.config.transfer_time(pre.prompt_tokens, overlapped=False)
        src.scheduler.release(pre)
        src._wake()
        self.final[pre.index] = dec
        dst.scheduler.receive(dec)
        dst._wake()
        self.transfers.append((pre.index, prefilled, admitted, start, env.now, dst.index, src.index))

    def _decoded(self, replica: Replica, finished: list[Request]) -> None:
        i = replica.index - len(self.prefill)
        if not self.freed[i].triggered:
            self.freed[i].succeed()


def simulate_disaggregated(trace: list[TraceRequest], config: DisaggConfig, *,
                           costs: tuple[CostModel, CostModel] | None = None, source: str = "<trace>") -> SimResult:
    """Replay ``trace`` through a disaggregated deployment; the summary adds a ``disaggregation`` section."""
    import simpy

    from sim.cost.roofline import RooflineCostModel

    model = config.model_spec()
    pools = (config.prefill, config.decode)
    if costs is None:
        costs = tuple(RooflineCostModel(model, p.gpu, **p.roofline_kwargs(model)) for p in pools)
    config.prefill.check_router()
    memories, blocks = zip(*(p.memory(model) for p in pools))
    # a prefill replica holds a prompt and its first token; a decode replica the whole request
    prompts = [dataclasses.replace(tr, output_tokens=1) for tr in trace]
    pre_ok, skipped = config.prefill.servable(prompts, model, blocks[0], source)
    dec_ok, dec_skipped = config.decode.servable(trace, model, blocks[1], source)
    keep = {r.index for r in pre_ok}
    requests = [r for r in dec_ok if r.index in keep]
    seen = {s.request_id for s in skipped}
    skipped = skipped + [s for s in dec_skipped if s.request_id not in seen]
    origin = rebase_arrivals(requests)
    env = simpy.Environment()
    rec = Recorder()
    run = _Disaggregated(env, config, [config.prefill.make_scheduler(blocks[0]) for _ in range(config.prefill.replicas)],
                         [config.decode.make_scheduler(blocks[1]) for _ in range(config.decode.replicas)],
                         costs[0], costs[1], rec)
    bound_memory([r.scheduler for r in run.prefill + run.decode], requests)

    replay_arrivals(env, requests, run.submit)
    finals = [run.final[r.index] for r in requests]
    batches, micro = rec.take_tables()
    schedulers = [r.scheduler for r in run.prefill + run.decode]
    for s in schedulers:
        s.flush_tokens()
    gaps = GapLog.merged(s.gap_log for s in schedulers)
    stages = metrics.stage_bubbles(batches, micro) if len(micro) else Table()
    gpu = get_gpu(config.decode.gpu)
    summary = metrics.summarize(
        finals, skipped, trace_len=len(trace), batches=batches, stages=stages, num_blocks=blocks[1],
        block_size=config.decode.block_size, num_preemptions=sum(s.num_preemptions for s in schedulers),
        num_gpus=config.num_gpus, peak_flops=config.decode.peak_flops(model), mem_bandwidth=gpu.mem_bandwidth,
        source=source, config={"mode": "disaggregated", **dataclasses.asdict(config)},
        cost={"prefill": costs[0].describe(), "decode": costs[1].describe()}, versions=_versions(),
        gpus_per_stage=config.decode.tp, memory={"prefill": memories[0], "decode": memories[1]}, gaps=gaps)
    summary["time_origin_s"] = origin
    _per_pool(summary, batches, config, blocks, model)
    summary["disaggregation"] = _transfer_summary(run, env.now, config)
    req_df = _with_transfers(metrics.requests_table(finals), run, requests)
    batches = batches.assign(pool=np.where(column(batches, "replica") < config.prefill.replicas, "prefill",
                                           "decode")) if len(batches) else batches
    if config.prefill.prefix_caching:  # the prefill pool's cache (decode replicas receive KV, they look up none)
        pre = [r.scheduler for r in run.prefill]
        batches, req_df = add_cache_outputs(summary, batches, req_df, [run.prefill_copy[r.index] for r in requests],
                                            pre, range(len(pre)))
    return SimResult(summary, req_df, batches, micro, stages, skipped)


def _per_pool(summary: dict, batches: Table, config: DisaggConfig, blocks: tuple[int, int], model) -> None:
    """KV use and utilisation pool by pool: each pool's batches over its own capacity, FLOPs on its own GPUs."""
    split = column(batches, "replica") < config.prefill.replicas if len(batches) else np.zeros(0, dtype=bool)
    kv, flops, nbytes = {}, 0.0, 0.0
    for name, pool, rows, cap in (("prefill", config.prefill, batches[split], blocks[0]),
                                  ("decode", config.decode, batches[~split], blocks[1])):
        used = column(rows, "kv_blocks_used")[column(rows, "stage") == 0]
        kv[name] = {"blocks_per_replica": int(cap),
                    "mean_utilization": float(used.mean() / cap) if len(used) else 0.0,
                    "max_utilization": float(used.max() / cap) if len(used) else 0.0}
        flops += float(column(rows, "flops").sum()) * pool.tp
        nbytes += float(column(rows, "bytes").sum()) * pool.tp
    summary["kv_cache"].update(kv["decode"])  # the headline figures: the decode pool, whose KV holds requests
    summary["kv_cache"]["pools"] = kv
    denom = summary["throughput"]["makespan_s"] * config.num_gpus
    peak = max(config.prefill.peak_flops(model), config.decode.peak_flops(model))
    bw = max(get_gpu(p.gpu).mem_bandwidth for p in (config.prefill, config.decode))
    summary["utilization"].update(mfu=flops / (denom * peak) if denom > 0 else None,
                                  memory_bandwidth_utilization=nbytes / (denom * bw) if denom > 0 else None)


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "mean": None}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def _transfer_summary(run: _Disaggregated, end: float, config: DisaggConfig) -> dict[str, Any]:
    """Transfer times, decode admission waits and link utilisation."""
    t = run.transfers
    rate, latency = config.link.rate_and_latency(config.prefill.gpu)
    return {"transfers": len(t),
            "transfer_s": _pct([x[4] - x[3] for x in t]),
            "link_wait_s": _pct([x[3] - x[2] for x in t]),
            "decode_admission_wait_s": _pct([x[2] - x[1] for x in t]),
            "link_utilization": [b / end if end > 0 else 0.0 for b in run.link_busy],
            "link": {**dataclasses.asdict(config.link), "bytes_per_s_per_gpu": rate, "latency_s": latency},
            "gpus": {"prefill": config.prefill.replicas * config.prefill.tp * config.prefill.pp,
                     "decode": config.decode.replicas * config.decode.tp * config.decode.pp}}


def _with_transfers(req_df: Table, run: _Disaggregated, requests: list[Request]) -> Table:
    """requests.csv's disaggregation columns: prefill replica, decode replica, transfer start and end."""
    by = {x[0]: (x[3], x[4], x[5], x[6]) for x in run.transfers}
    order = sorted(r.index for r in requests)
    nan = float("nan")
    return req_df.assign(
        prefill_replica=[by[i][3] if i in by else run.final[i].replica for i in order],
        decode_replica=[by[i][2] if i in by else -1 for i in order],
        transfer_start=[by[i][0] if i in by else nan for i in order],
        transfer_end=[by[i][1] if i in by else nan for i in order])
