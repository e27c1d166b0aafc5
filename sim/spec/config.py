"""``--speculative-config`` and ``--spec-acceptance``: what speculates, how many tokens, how often they are accepted.

The JSON keys are vLLM's (``SpeculativeConfig``: ``method``, ``num_speculative_tokens``, ``model``,
``prompt_lookup_min``/``prompt_lookup_max`` for n-gram). Acceptance is given as vLLM logs it
("Per-position acceptance rate": the fraction of drafts whose position i was accepted, non-increasing), or as one
rate ``a`` of a geometric model (position i accepted with probability a^i).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

METHODS = ("eagle", "eagle3", "mtp", "ngram", "draft_model")
#: methods whose drafter writes KV for its proposals: vLLM allocates num_lookahead_tokens = k more slots for them
#: (Scheduler.__init__: speculative_config.use_eagle() or uses_draft_model(); vllm/v1/core/sched/scheduler.py)
LOOKAHEAD_METHODS = ("eagle", "eagle3", "mtp", "draft_model")
#: methods whose drafter is one layer-like head on the target's hidden states (priced as a layer per proposed token)
HEAD_METHODS = ("eagle", "eagle3", "mtp")
MAX_SPEC_TOKENS = 32  # far above any published setting (vLLM examples use 1-7); bounds the per-step loops
_KNOWN_KEYS = {"method", "num_speculative_tokens", "model", "prompt_lookup_min", "prompt_lookup_max"}

#: default acceptance per method where a public measurement exists: (rates as ``--spec-acceptance`` reads them, source)
DEFAULT_ACCEPTANCE: dict[str, tuple[str, str]] = {
    # tau = 2.77 tokens per step with K = 7 on MT-bench, temperature 1, for yuhuili/EAGLE3-LLaMA3.1-Instruct-8B
    # (table on the nebius/EAGLE3-Llama-3.3-70B-Instruct model card, 2025); 1 + sum_{i<=7} a^i = 2.77 gives a = 0.65
    "eagle3": ("0.65", ("EAGLE-3 Llama-3.1-8B head, tau 2.77 at K=7 on MT-bench (nebius EAGLE3-Llama-3.3-70B model "
                        "card's comparison table): geometric a=0.65")),
    # no default for "eagle": we could not check the EAGLE paper's per-position rates here (give --spec-acceptance)
    # DeepSeek-V3 technical report (arXiv 2412.19437, section 5.4.3): the second token's acceptance is 85-90%
    "mtp": ("0.875", "DeepSeek-V3 report (arXiv 2412.19437 s5.4.3): MTP 2nd-token acceptance 85-90%, midpoint"),
}


@dataclass(frozen=True)
class Acceptance:
    """Per-position acceptance as vLLM reports it: ``rates[i]`` = P(position i+1 of a draft accepted)."""

    rates: tuple[float, ...]
    geometric: bool
    source: str = "--spec-acceptance"

    def rate(self, position: int) -> float:
        """Unconditional rate of 1-based ``position`` (a geometric model extends to any position)."""
        if self.geometric:
            return self.rates[0] ** position
        return self.rates[position - 1] if position <= len(self.rates) else 0.0

    def conditional(self, k: int) -> list[float]:
        """P(position i accepted | positions before it accepted), i = 1..k: what a draw walks through."""
        out, prev = [], 1.0
        for i in range(1, k + 1):
            r = self.rate(i)
            out.append(r / prev if prev > 0 else 0.0)
            prev = r
        return out

    def expected_length(self, k: int) -> float:
        """Mean tokens a verify step of ``k`` proposals emits: 1 (the target's own) + sum of position rates."""
        return 1.0 + sum(self.rate(i) for i in range(1, k + 1))


def parse_acceptance(text: str, source: str = "--spec-acceptance") -> Acceptance:
    """One rate (geometric) or a comma-separated non-increasing list of per-position rates, each in [0, 1]."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts) or len(parts) > MAX_SPEC_TOKENS:
        raise ValueError(f"--spec-acceptance: give one rate or up to {MAX_SPEC_TOKENS} comma-separated rates, "
                         f"got {text!r:.60}")
    try:
        rates = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--spec-acceptance: rates are numbers in [0, 1], got {text!r:.60}") from None
    if any(not (math.isfinite(r) and 0.0 <= r <= 1.0) for r in rates):
        raise ValueError(f"--spec-acceptance: every rate must be in [0, 1], got {text!r:.60}")
    if any(b > a for a, b in itertools.pairwise(rates)):
        raise ValueError("--spec-acceptance: per-position rates (as vLLM logs them) cannot rise with the position, "
                         f"got {text!r:.60}")
    return Acceptance(rates, geometric=len(rates) == 1, source=source)


@dataclass(frozen=True)
class SpecConfig:
    """A parsed ``--speculative-config`` with the acceptance model it runs with."""

    method: str
    num_speculative_tokens: int
    acceptance: Acceptance
    model: str | None = None  # the draft model (draft_model) or head checkpoint (informational for heads)

    @property
    def lookahead(self) -> int:
        """KV slots allocated beyond the verified positions (vLLM's num_lookahead_tokens)."""
        return self.num_speculative_tokens if self.method in LOOKAHEAD_METHODS else 0

    def describe(self) -> dict:
        """JSON-able, for summary.json."""
        a = self.acceptance
        return {"method": self.method, "num_speculative_tokens": self.num_speculative_tokens, "model": self.model,
                "acceptance": {"rates": list(a.rates), "model": "geometric" if a.geometric else "per-position",
                               "source": a.source,
                               "expected_tokens_per_step": a.expected_length(self.num_speculative_tokens)}}


def parse_speculative_config(text: str, acceptance: str | None = None) -> SpecConfig:
    """``--speculative-config JSON`` (vLLM's keys) with ``--spec-acceptance`` or the method's published default."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"--speculative-config: not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError('--speculative-config: give a JSON object, e.g. {"method": "eagle3", '
                         '"num_speculative_tokens": 3}')
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"--speculative-config: unknown key {unknown[0]!r:.40} (known: {', '.join(sorted(_KNOWN_KEYS))})")
    method = raw.get("method")
    if method not in METHODS:
        raise ValueError(f"--speculative-config: method must be one of {', '.join(METHODS)}, got {method!r:.40}")
    k = raw.get("num_speculative_tokens")
    if type(k) is not int or not 1 <= k <= MAX_SPEC_TOKENS:
        raise ValueError(f"--speculative-config: num_speculative_tokens must be a whole number in "
                         f"[1, {MAX_SPEC_TOKENS}], got {k!r:.40}")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"--speculative-config: model must be a string, got {model!r:.40}")
    if method == "draft_model" and not model:
        raise ValueError('--speculative-config: method draft_model needs "model" (a catalogue model or a '
                         'config.json path, e.g. "llama-3.2-1b")')
    for key in ("prompt_lookup_min", "prompt_lookup_max"):
        v = raw.get(key)
        if v is not None and (type(v) is not int or v < 1):
            raise ValueError(f"--speculative-config: {key} must be a whole number >= 1, got {v!r:.40}")
    if acceptance is not None:
        acc = parse_acceptance(acceptance)
    elif method in DEFAULT_ACCEPTANCE:
        rates, source = DEFAULT_ACCEPTANCE[method]
        acc = parse_acceptance(rates, source)
    else:
        raise ValueError(f"--speculative-config: {method} acceptance depends on the workload and the drafter and has "
                         "no published default: give --spec-acceptance (e.g. 0.6, or vLLM's logged per-position "
                         "rates 0.7,0.5,0.35)")
    if not acc.geometric and len(acc.rates) < k:
        raise ValueError(f"--spec-acceptance: {len(acc.rates)} per-position rates for num_speculative_tokens {k}: "
                         "give one per position (or a single geometric rate)")
    return SpecConfig(method, k, acc, model)
