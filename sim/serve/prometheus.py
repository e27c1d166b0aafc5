"""/metrics of ``servesim serve`` in Prometheus' text format, with vLLM V1's metric names, labels and buckets.

Names and buckets as vLLM's ``vllm/v1/metrics/loggers.py`` (PrometheusStatLogger, 0.11 and later): gauges
``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (a fraction from 0 to 1,
which replaced ``vllm:gpu_cache_usage_perc``); counters ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
``vllm:request_success_total``; histograms ``vllm:time_to_first_token_seconds``, ``vllm:inter_token_latency_seconds``
(which replaced ``vllm:time_per_output_token_seconds``), ``vllm:e2e_request_latency_seconds``. Labels
``model_name`` and ``engine`` (here the replica's index). Every time is simulated seconds (the deployment's, as
a client of the real one would measure; the wall clock is faster by ``--speedup``).
"""

from __future__ import annotations

import bisect
from typing import Any

# vLLM's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)


class Histogram:
    """Cumulative-bucket histogram as Prometheus exposes it (``_bucket{le=...}``, ``_sum``, ``_count``)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cum = [], 0
        for bound, n in zip((*self.buckets, "+Inf"), self.counts):
            cum += n
            le = bound if isinstance(bound, str) else repr(float(bound))
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {cum}')
        out.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


HISTOGRAMS = (("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS),
              ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS),
              ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", E2E_BUCKETS))
GAUGES = (("vllm:num_requests_running", "running", "Number of requests in model execution batches."),
          ("vllm:num_requests_waiting", "waiting", "Number of requests waiting to be processed."),
          ("vllm:kv_cache_usage_perc", "kv_usage", "KV-cache usage. 1 means 100 percent usage."))
COUNTERS = (("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
            ("vllm:generation_tokens_total", "Number of generation tokens processed."),
            ("vllm:request_success_total", "Count of successfully processed requests."))


class ServeMetrics:
    """Per replica: the counters and histograms of served requests, fed by the deployment's token and done hooks."""

    def __init__(self, model_name: str, replicas: int) -> None:
        self.model_name = model_name
        self.hist = [{name: Histogram(b) for name, _h, b in HISTOGRAMS} for _ in range(replicas)]
        self.counters = [{name: 0 for name, _h in COUNTERS} for _ in range(replicas)]
        self._last_token: dict[int, float] = {}

    def on_token(self, served: Any, t: float) -> None:
        """One output token of ``served`` at simulated time ``t`` (TTFT for the first, ITL for the others)."""
        r = served.request
        h = self.hist[max(r.replica, 0)]
        last = self._last_token.get(id(served))
        if last is None:
            h["vllm:time_to_first_token_seconds"].observe(t - served.arrival)
        else:
            h["vllm:inter_token_latency_seconds"].observe(t - last)
        self._last_token[id(served)] = t
        self.counters[max(r.replica, 0)]["vllm:generation_tokens_total"] += 1

    def on_done(self, served: Any, end: float | None) -> None:
        """``served`` finished (``end``: when the client had it all) or was aborted (``end`` None)."""
        self._last_token.pop(id(served), None)
        r = served.request
        c = self.counters[max(r.replica, 0)]
        if r.replica >= 0:
            c["vllm:prompt_tokens_total"] += r.prompt_tokens
        if end is not None:
            c["vllm:request_success_total"] += 1
            self.hist[r.replica]["vllm:e2e_request_latency_seconds"].observe(end - served.arrival)

    def render(self, state: list[dict[str, float]]) -> str:
        """The exposition text; ``state`` per replica: ``running``, ``waiting``, ``kv_usage``."""
        labels = [f'engine="{i}",model_name="{self.model_name}"' for i in range(len(state))]
        lines: list[str] = []
        for name, key, help_ in GAUGES:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
            lines += [f"{name}{{{lab}}} {float(s[key])!r}" for lab, s in zip(labels, state)]
        for name, help_ in COUNTERS:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            for lab, c in zip(labels, self.counters):
                extra = ',finished_reason="length"' if name == "vllm:request_success_total" else ""
                lines.append(f"{name}{{{lab}{extra}}} {float(c[name])!r}")
        for name, help_, _b in HISTOGRAMS:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            for lab, h in zip(labels, self.hist):
                lines += h[name].lines(name, lab)
        return "\n".join(lines) + "\n"
