"""Reader of GuideLLM's JSON report (vllm-project/guidellm: ``guidellm benchmark ... --outputs benchmarks.json``).

A report holds ``benchmarks``: one per load level of the profile (a sweep runs several), each with its scheduling
strategy (``config.strategy``, ``args.strategy`` in older versions: type_ synchronous, concurrent, throughput,
constant or poisson, with rate or streams), ``metrics`` (time_to_first_token_ms, inter_token_latency_ms,
time_per_output_token_ms, request_latency in seconds; each by status: ``successful`` {mean, median, percentiles:
{p50, p90, p99, ...}}) and ``requests`` {successful, incomplete, errored}: per-request records with prompt_tokens,
output_tokens, request_start_time, request_end_time, request_latency and the per-request time_to_first_token_ms,
inter_token_latency_ms, time_per_output_token_ms (guidellm/schemas/request_stats.py). GuideLLM's definitions:
TTFT = first token iteration - request start; ITL = (last token - first token) / (output tokens - 1), per
request; TPOT = (last token - request start) / output tokens (the first token included); latency = end - start.
Incomplete and errored requests are summarised apart from successful ones; only successful ones are compared.
"""

from __future__ import annotations

from sim.measured.run import Definitions, Fields, MeasuredError, MeasuredRequest, MeasuredRun, read_json

DEFINITIONS = Definitions(
    clock="client",
    metrics=(("time_to_first_token_ms", "ttft", "TTFT"), ("inter_token_latency_ms", "mean_gap", "ITL (per request)"),
             ("time_per_output_token_ms", "tpot_incl", "TPOT (first token included)"),
             ("request_latency", "e2e", "request latency")),
    percentile="GuideLLM's: the smallest value whose cumulative share reaches p (inverse CDF, no interpolation)",
    percentile_method="inverse_cdf",
    failed="errored and incomplete requests are summarised apart; only successful ones are compared")

SCALE = {"time_to_first_token_ms": 1e-3, "inter_token_latency_ms": 1e-3, "time_per_output_token_ms": 1e-3,
         "request_latency": 1.0}


def looks_like(data: dict) -> bool:
    return isinstance(data.get("benchmarks"), list)


def _summary(metrics: Fields | None) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, scale in SCALE.items():
        m = metrics.sub(key, required=False) if metrics else None
        ok = m.sub("successful", required=False) if m else None
        if ok is None:
            continue
        pct = ok.sub("percentiles", required=False)
        block = {k: v for k, v in (("mean", ok.number("mean", required=False, scale=scale)),
                                   ("p50", ok.number("median", required=False, scale=scale)),
                                   ("p90", pct.number("p90", required=False, scale=scale) if pct else None),
                                   ("p99", pct.number("p99", required=False, scale=scale) if pct else None))
                 if v is not None}
        if block:
            out[key] = block
    return out


def _request(rec: Fields, success: bool) -> tuple[float | None, MeasuredRequest]:
    timings = (rec.sub("info", required=False) or Fields(rec.path, {}, "info")).sub("timings", required=False)
    start = rec.number("request_start_time", required=False, low=-1e18)
    if start is None and timings is not None:
        start = timings.number("request_start", required=False, low=-1e18)
    n_in = rec.integer("prompt_tokens", required=False)
    n_out = rec.integer("output_tokens", required=False)
    if n_in is None:
        raise rec.fail("prompt_tokens", "missing (the request's prompt length)")
    ttft = rec.number("time_to_first_token_ms", required=False, scale=1e-3)
    latency = rec.number("request_latency", required=False)
    itl = rec.number("inter_token_latency_ms", required=False, scale=1e-3)
    gaps = None
    if itl is not None and n_out and n_out > 1:  # GuideLLM keeps first-to-last-token span only: one pooled gap
        gaps = (itl * (n_out - 1),)
    return start, MeasuredRequest(input_tokens=n_in, output_tokens=n_out or 0, ttft=ttft if success else None,
                                  latency=latency if success else None, gaps=gaps if success else None,
                                  success=success)


def _total(b: Fields) -> int | None:
    """Requests the benchmark made: scheduler_metrics.requests_made.total (request_totals.total in older versions)."""
    sched = b.sub("scheduler_metrics", required=False)
    made = sched.sub("requests_made", required=False) if sched else b.sub("request_totals", required=False)
    return made.integer("total", required=False) if made else None


def _benchmark(path: str, b: Fields, version: str | None) -> MeasuredRun:
    cfg = b.sub("config", required=False) or b.sub("args", required=False)
    strategy = cfg.sub("strategy", required=False) if cfg else None
    reqs_f = b.sub("requests", required=False)
    timed: list[tuple[float | None, MeasuredRequest]] = []
    for status in ("successful", "incomplete", "errored"):
        for i, raw in enumerate((reqs_f.array(status, required=False) if reqs_f else None) or []):
            rec = Fields(path, raw, f"{b.prefix}.requests.{status}[{i}]")
            if not isinstance(raw, dict):
                raise rec.fail(None, "expected a request record (an object)")
            timed.append(_request(rec, status == "successful"))
    exact = bool(timed) and all(s is not None for s, _ in timed)
    if exact:
        t0 = min(s for s, _ in timed)
        for s, r in timed:
            r.send_time = s - t0
    kind = strategy.text("type_") if strategy else None
    ok = [r for _, r in timed if r.success]
    metrics = b.sub("metrics", required=False)
    means = {}  # without request records: the successful requests' mean token counts, for a reconstruction
    for ours, theirs in (("in", "prompt_token_count"), ("out", "output_token_count")):
        m = metrics.sub(theirs, required=False) if metrics else None
        m = m.sub("successful", required=False) if m else None
        means[ours] = m.number("mean", required=False) if m else None
    run = MeasuredRun(
        source=path, format="guidellm", client="GuideLLM", client_version=version, definitions=DEFINITIONS,
        requests=[r for _, r in timed], summary=_summary(metrics),
        load={"arrival": kind, "request_rate": strategy.number("rate", required=False) if strategy else None,
              "concurrency": strategy.get("streams") if strategy else None,
              "num_prompts": len(timed) or _total(b),
              "mean_input_tokens": sum(r.input_tokens for r in ok) / len(ok) if ok else means["in"],
              "mean_output_tokens": sum(r.output_tokens for r in ok) / len(ok) if ok else means["out"]},
        label=f"{kind or 'benchmark'}" + (f" {strategy.get('rate')}" if strategy and strategy.has("rate") else ""),
        exact=exact)
    if not timed:
        run.notes.append("the benchmark lists no requests: the workload is reconstructed from its strategy and the "
                         "mean token counts")
    elif not exact:
        run.notes.append("request start times missing: send times reconstructed from the strategy")
    return run


def read_guidellm(path: str) -> list[MeasuredRun]:
    """One MeasuredRun per benchmark (load level) of the report."""
    f = read_json(path, "GuideLLM report")
    if not looks_like(f.data):
        raise f.fail("benchmarks", "missing: not a GuideLLM report")
    meta = f.sub("metadata", required=False)
    version = (meta.text("guidellm_version") if meta else None) or f.text("guidellm_version")
    benches = f.array("benchmarks")
    if not benches:
        raise f.fail("benchmarks", "empty: the report holds no benchmark")
    out = []
    for i, b in enumerate(benches):
        bf = Fields(path, b, f"benchmarks[{i}]")
        if not isinstance(b, dict):
            raise bf.fail(None, "expected a benchmark (an object)")
        out.append(_benchmark(path, bf, version))
    if all(not r.requests and not r.summary for r in out):
        raise MeasuredError(f"{f.where('benchmarks')}: no metrics and no requests in any benchmark")
    return out
