"""N-gram speculative decoding (prompt lookup, vLLM's ``ngram`` method) in the real engine.

The shared scheduler (``sim.schedulers.vllm_v1``) asks ``SpecDecoding.proposal`` how many drafts a decoding
request verifies; here its ``proposer`` hook looks them up for real in the request's token history, and the
runner verifies them in one forward pass (the request's last token plus its drafts, as a chunk). The target's
greedy token at each position is compared with the draft there: the leading matches are accepted and the
target's token after them is emitted too, as vLLM's rejection sampler does with greedy sampling. The accepted
count goes to ``SpecDecoding.outcomes``, so ``on_batch_done`` advances the request exactly as in the simulator.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

from sim.request import Request
from sim.spec.config import SpecConfig, parse_speculative_config
from sim.spec.state import SpecDecoding

if TYPE_CHECKING:
    import pandas as pd

    from engine.runner import ModelRunner
    from sim.catalog.models import ModelSpec

#: vLLM's defaults when neither prompt_lookup_min nor prompt_lookup_max is set (SpeculativeConfig.__post_init__,
#: vllm/config/speculative.py: both 5; one given, the other takes its value)
DEFAULT_PROMPT_LOOKUP = 5
ENGINE_METHODS = ("ngram",)


def ngram_drafts(tokens: Sequence[int], min_n: int, max_n: int, k: int) -> list[int]:
    """Up to ``k`` drafts by prompt lookup: the longest suffix of ``tokens`` (``min_n`` to ``max_n`` tokens long)
    that occurs earlier, at its earliest occurrence, and the tokens that followed it there (fewer than ``k``
    where the history ends first). The policy of vLLM's NgramProposer; a plain scan, the histories here are short."""
    total = len(tokens)
    if k <= 0 or total < min_n:
        return []
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = list(tokens[total - n:])
        first = suffix[0]
        # an occurrence must end before the last token (the suffix itself is not a match)
        for s in range(total - n):
            if tokens[s] == first and list(tokens[s:s + n]) == suffix:
                return list(tokens[s + n:s + n + k])
    return []


def greedy_accept(drafts: Sequence[int], greedy: Sequence[int]) -> tuple[int, list[int]]:
    """(drafts accepted, tokens emitted) of a greedy verify: ``greedy[i]`` is the target's token after the last
    known token and drafts[:i]; drafts are accepted while they equal it, then the target's own token follows."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == greedy[accepted]:
        accepted += 1
    return accepted, list(greedy[:accepted + 1])


def prompt_lookup(text: str) -> tuple[int, int]:
    """(prompt_lookup_min, prompt_lookup_max) of a ``--speculative-config`` JSON, with vLLM's defaults."""
    raw = json.loads(text)
    lo, hi = raw.get("prompt_lookup_min"), raw.get("prompt_lookup_max")
    if lo is None and hi is None:
        lo = hi = DEFAULT_PROMPT_LOOKUP
    lo = hi if lo is None else lo
    hi = lo if hi is None else hi
    if lo > hi:
        raise ValueError(f"--speculative-config: prompt_lookup_min {lo} exceeds prompt_lookup_max {hi}")
    return lo, hi


def engine_spec_config(text: str, acceptance: str | None = None) -> SpecConfig:
    """The engine's speculative configuration: n-gram only; its acceptance is measured, not drawn, so
    ``--spec-acceptance`` is optional (a placeholder rate stands in; no draw uses it)."""
    spec = parse_speculative_config(text, acceptance or "1")
    if spec.method not in ENGINE_METHODS:
        raise ValueError(f"--speculative-config: the engine runs method ngram only (prompt lookup), "
                         f"got {spec.method}")
    return spec


class EngineSpeculation:
    """Real drafts and real verification for one runner: the scheduler's ``SpecDecoding`` hooks, bound to it."""

    def __init__(self, state: SpecDecoding, runner: ModelRunner, min_n: int, max_n: int) -> None:
        """``runner``: the ModelRunner whose token store the drafts come from; ``state`` gets the proposer hook."""
        self.state = state
        self.runner = runner
        self.min_n, self.max_n = min_n, max_n
        self.drafts: dict[str, list[int]] = {}
        #: per proposal call: drafts found (0..k allowed): how often lookup hits, and how far
        self.draft_lengths: list[int] = []
        #: per request (trace index): (outputs generated, drafts allowed, drafts found) of each lookup, in order;
        #: what validate replays in the simulator (calibration.validate.speculative.MeasuredLookups)
        self.lookups: dict[int, list[tuple[int, int, int]]] = {}
        state.proposer = self.propose

    def propose(self, request: Request, k: int) -> int:
        """The scheduler's proposer hook: look up to ``k`` drafts up in ``request``'s history; how many found.
        A request whose trace fixes some output ids (shared blocks a next turn resends: ModelRunner.forced_token)
        drafts nothing: a forced id would override the target's and break the greedy comparison."""
        if self.runner.shares_blocks(request):
            return 0
        drafts = ngram_drafts(self.runner.token_ids(request), self.min_n, self.max_n, k)
        self.drafts[request.request_id] = drafts
        self.draft_lengths.append(len(drafts))
        self.lookups.setdefault(request.index, []).append((request.num_generated, k, len(drafts)))
        return len(drafts)

    def drafts_for(self, request: Request, n: int) -> list[int]:
        """The ``n`` drafts a verify item of ``request`` feeds after its last known token."""
        drafts = self.drafts.get(request.request_id, [])
        if len(drafts) < n or self.state.proposed.get(request) != n:
            raise ValueError(f"request {request.request_id}: a verify of {n} drafts, but {len(drafts)} proposed")
        return drafts[:n]

    def verified(self, request: Request, greedy: Sequence[int]) -> list[int]:
        """Record a verify's outcome for ``on_batch_done``; the tokens it emits (accepted drafts, then the target's)."""
        drafts = self.drafts.pop(request.request_id)[:len(greedy) - 1]
        accepted, emitted = greedy_accept(drafts, greedy)
        self.state.outcomes[request] = accepted
        return emitted


def speculate(config: Any, sched: Any, runner: ModelRunner, model: ModelSpec) -> EngineSpeculation:
    """Turn n-gram speculation on in ``sched`` (the shared scheduler) and ``runner`` for one replay; ``config``
    an EngineConfig with ``speculative_config`` set. Refuses what the engine does not run, in one line."""
    spec = engine_spec_config(config.speculative_config, config.spec_acceptance)
    if not getattr(sched, "supports_speculation", False):
        raise ValueError(f"--speculative-config is modelled for vLLM V1 only: use --scheduler vllm_v1 "
                         f"(not {config.scheduler})")
    lo, hi = prompt_lookup(config.speculative_config)
    state = SpecDecoding(spec, config.seed, model.max_context)
    sched.enable_speculation(state)
    runner.speculation = EngineSpeculation(state, runner, lo, hi)
    return runner.speculation


def speculation_outputs(summary: dict, frame: pd.DataFrame, req_df: pd.DataFrame, requests: list, sched: Any,
                        speculation: EngineSpeculation) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.json's ``speculative`` section and the speculation columns, as the simulator writes them, plus
    what only the engine knows: how often prompt lookup found drafts. The acceptance there is measured."""
    from sim.gap_log import GapLog
    from sim.spec.run import add_spec_outputs
    sched.flush_tokens()
    frame, req_df = add_spec_outputs(summary, frame, req_df, requests, [sched], GapLog.merged([sched.gap_log]))
    sec = summary["speculative"]
    lo, hi = speculation.min_n, speculation.max_n
    lengths = speculation.draft_lengths
    k = speculation.state.k
    sec["acceptance"] = {"rates": None, "model": "measured", "source": "greedy verification in the engine",
                         "expected_tokens_per_step": None}
    sec["prompt_lookup_min"], sec["prompt_lookup_max"] = lo, hi
    sec["lookups"] = len(lengths)
    sec["lookup_hit_rate"] = sum(1 for n in lengths if n) / len(lengths) if lengths else None
    sec["draft_length_counts"] = [sum(1 for n in lengths if n == i) for i in range(k + 1)]
    return frame, req_df
