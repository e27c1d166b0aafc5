"""What a request's prompt shares with others: chained hashes of its full KV blocks.

A trace describes reuse in one of two ways (``TraceRequest.extra``):

- ``hash_ids`` (Mooncake): one id per ``hash_block_size``-token block of the prompt (512 in
  Mooncake's traces); equal ids mean equal tokens, prefix included;
- ``prefix_group`` with ``prefix_len``: the first ``prefix_len`` tokens are the same for every
  request of the group (a shared system prompt; a conversation whose turns resend the previous
  ones).

Either maps onto the deployment's block size: block ``k`` of the prompt gets a key naming what the
trace says its tokens (and prefix) are; blocks the trace does not describe as shared get keys
unique to the request (a preempted request can still hit its own blocks). Keys are int64s built
from the trace's integers (group names by BLAKE2): the same in every process. A key names its
block's position in the prompt (so equal keys sit at equal positions), and a prefix's consecutive
blocks have consecutive keys within each trace block or group (``sim.kv.key_index`` keeps one entry
per aligned window of 32 such keys: a 512-token Mooncake block in 16-token blocks).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import numpy as np

from sim.inputs import brief_json as _brief

HASH_IDS, HASH_BLOCK_SIZE, GROUP, GROUP_LEN = "hash_ids", "hash_block_size", "prefix_group", "prefix_len"
MOONCAKE_BLOCK_SIZE = 512
MAX_ID = 1 << 40  # hash ids are packed with their position (20 bits) and a tag into an int64 key
OWN = 3  # the tag (low two bits) of a key unique to one request: only that request can hit it
NO_KEY = np.iinfo(np.int64).min  # a block holding no key


def stable_key(value: Any) -> int:
    """A process-independent integer for a group id (small ints as they are, anything else by BLAKE2)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 36:
        return value
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "little")


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def prefix_spec(extra: dict[str, Any]) -> tuple | None:
    """The reuse a trace line declares, as a small immutable tuple (None: no declared reuse).

    Groups nest: ``prefix_group: ["sys", "chat-7"]`` with ``prefix_len: [300, 2100]`` says tokens
    [0, 300) are group sys's (a system prompt) and [300, 2100) the conversation's earlier turns.
    """
    if HASH_IDS in extra:
        return (HASH_IDS, tuple(extra[HASH_IDS]), int(extra.get(HASH_BLOCK_SIZE, MOONCAKE_BLOCK_SIZE)))
    if GROUP in extra:
        return (GROUP, tuple(stable_key(g) for g in _as_list(extra[GROUP])),
                tuple(int(n) for n in _as_list(extra[GROUP_LEN])))
    return None


#: the most hash ids one request may give: a key packs an id's row in the request into 20 bits (``shared_keys``)
MAX_HASH_IDS = 1 << 20
#: the largest ``hash_block_size``: no tool hashes blocks of more than a million tokens (Mooncake's are 512), and
#: a block size near 2^41 would overflow the int64 packing
MAX_HASH_BLOCK_SIZE = 1 << 20


def _is_int(v: Any) -> bool:
    """An int that is not a bool (JSON's true is no id)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _check_hash_ids(extra: dict[str, Any], tokens: int | None) -> tuple[str, str] | None:
    """(field, reason) when hash_ids or hash_block_size is malformed, past its bound, or longer than ``tokens``."""
    ids = extra[HASH_IDS]
    if not isinstance(ids, list):
        return HASH_IDS, f"expected a list of integers, got {_brief(ids)}"
    if len(ids) > MAX_HASH_IDS:
        return HASH_IDS, f"expected at most {MAX_HASH_IDS:,} ids (2^20) per request, got {len(ids):,}"
    at = next((k for k, i in enumerate(ids) if not _is_int(i)), None)
    if at is not None:
        return HASH_IDS, f"expected a list of integers, got {_brief(ids[at])} at index {at}"
    at = next((k for k, i in enumerate(ids) if not 0 <= i < MAX_ID), None)
    if at is not None:
        return HASH_IDS, (f"expected ids in [0, 2^40) (Mooncake's are small integers), got {_brief(ids[at])} "
                          f"at index {at}")
    size = extra.get(HASH_BLOCK_SIZE, MOONCAKE_BLOCK_SIZE)
    if not _is_int(size) or not 1 <= size <= MAX_HASH_BLOCK_SIZE:
        return HASH_BLOCK_SIZE, f"expected an integer in [1, 2^20] (tokens per hash id), got {_brief(size)}"
    most = -(-tokens // size) if tokens is not None else len(ids)
    if len(ids) > most:
        return HASH_IDS, (f"expected at most {most:,} id{'s' if most != 1 else ''}, one per {size}-token block of the "
                          f"request's {tokens:,} prompt and output tokens, got {len(ids):,}")
    return None


def check_prefix_fields(extra: dict[str, Any], prompt_tokens: int | None = None,
                        output_tokens: int | None = None) -> tuple[str, str] | None:
    """(field, reason) when the reuse fields of a trace line are malformed, else None; given the request's lengths,
    also when they describe more tokens than it holds (its prompt and answer, which a next turn may resend)."""
    tokens = prompt_tokens + output_tokens if prompt_tokens is not None and output_tokens is not None else None
    if HASH_IDS in extra:
        bad = _check_hash_ids(extra, tokens)
        if bad is not None:
            return bad
    elif HASH_BLOCK_SIZE in extra:
        return HASH_BLOCK_SIZE, f"given without {HASH_IDS} (the block size of which ids?)"
    if GROUP in extra:
        groups, ends = _as_list(extra[GROUP]), _as_list(extra.get(GROUP_LEN))
        if not all(_is_int(n) and n >= 0 for n in ends):
            return GROUP_LEN, (f"expected a non-negative integer (or a list, one per group) with {GROUP}, got "
                               f"{_brief(extra.get(GROUP_LEN))}")
        if len(ends) != len(groups) or any(b < a for a, b in itertools.pairwise(ends)):
            return GROUP_LEN, (f"expected one non-decreasing end per group of {GROUP} ({len(groups)}), "
                               f"got {_brief(ends)}")
        if tokens is not None and ends and ends[-1] > tokens:
            return GROUP_LEN, (f"expected at most the request's {tokens:,} prompt and output tokens, "
                               f"got {_brief(ends[-1])}")
    elif GROUP_LEN in extra:
        return GROUP_LEN, f"given without {GROUP} (the shared tokens of which group?)"
    return None


_K = 22  # bits for a block's index within its request or group (4M blocks, 67M tokens at 16 per block)


def own_key(index: int, k: int) -> int:
    """The key of block ``k`` of request ``index`` where its trace describes no reuse (only it can hit it)."""
    return ((index << _K | k) << 2) | OWN


def own_keys(index: int, a: int, b: int) -> np.ndarray:
    """``own_key`` of blocks ``[a, b)``: they step by 4, so never stored."""
    return np.arange(own_key(index, a), own_key(index, b), 4, dtype=np.int64)


def block_hashes(spec: tuple | None, index: int, prompt_tokens: int, block_size: int) -> np.ndarray:
    """One int64 key per full ``block_size``-token prompt block (a partial last block is never shared): the
    ``shared_keys``, then the request's own.

    Equal keys mean equal tokens with equal prefixes: Mooncake's ``hash_ids`` are prefix hashes
    already, a group's first ``prefix_len`` tokens are one prefix, and every other block is the
    request's own; so no chaining is needed and the keys are computed at numpy speed.
    """
    n = prompt_tokens // block_size
    shared = shared_keys(spec, prompt_tokens, block_size)
    own = own_keys(index, len(shared), n)
    return np.concatenate((shared, own)) if len(shared) else own


def shared_keys(spec: tuple | None, prompt_tokens: int, block_size: int) -> np.ndarray:
    """The keys of the leading ``shared_blocks`` full blocks: those other requests may share."""
    n = shared_blocks(spec, prompt_tokens, block_size)
    if not n:
        return np.zeros(0, dtype=np.int64)
    if spec[0] == GROUP:  # block k is group g's when it ends within g's tokens (and past the groups before)
        out = np.empty(n, dtype=np.int64)
        k = np.arange(n, dtype=np.int64)
        starts = 0
        for g, end in zip(spec[1], spec[2]):
            blocks = slice(starts, min(n, end // block_size))
            out[blocks] = ((np.int64(g & (1 << 36) - 1) << _K | k[blocks]) << 2) | 2
            starts = max(starts, end // block_size)
        return out
    _, ids, size = spec
    if size % block_size:  # a block straddles two trace blocks: hash the ids it spans (rare block sizes)
        out = np.empty(n, dtype=np.int64)
        for j in range(n):  # tagged 1 like every trace-described block (a raw hash could read as "own")
            first, last = j * block_size // size, ((j + 1) * block_size - 1) // size
            out[j] = (hash((1, first, ids[first:last + 1], j * block_size - first * size)) & (1 << 60) - 1) << 2 | 1
        return out
    per = size // block_size
    rows = -(-n // per)
    # block j of the r-th trace block: ((((id << 20) | r) * per + j) << 2) | 1, the id with its position in the
    # list (equal for real prefix hashes; tells repeats within a request apart); the r and j terms are _lanes'
    return ((np.asarray(ids[:rows], dtype=np.int64) * (4 * per << 20))[:, None] + _lanes(per, rows)).ravel()[:n]


def shared_runs(spec: tuple | None, num_tokens: int, block_size: int) -> list[tuple[Any, int, int]]:
    """``shared_keys(spec, num_tokens, block_size)`` as runs ``(family, first, count)``, block ``i`` of a run being
    ``(family, first + i)``: equal pairs where the keys are equal (short of the int64 packing's wraparound), in a
    list as long as the hash ids or groups, however many tokens (what ``trace stats`` compares)."""
    n = shared_blocks(spec, num_tokens, block_size)
    runs: list[tuple[Any, int, int]] = []
    if not n:
        return runs
    if spec[0] == GROUP:  # group g's keys number its blocks from the start of the prompt
        starts = 0
        for g, end in zip(spec[1], spec[2]):
            stop = min(n, end // block_size)
            if stop > starts:
                runs.append(((GROUP, g & (1 << 36) - 1), starts, stop - starts))
            starts = max(starts, end // block_size)
        return runs
    _, ids, size = spec
    if size % block_size == 0:  # block u in an id's row has key ((id * per << 20) + u) << 2 | 1: family id * per, at u
        per = size // block_size
        for r in range(-(-n // per)):
            family, a, b = (HASH_IDS, ids[r] * per), r * per, min(n, (r + 1) * per)
            if runs and runs[-1][0] == family and runs[-1][1] + runs[-1][2] == a:
                runs[-1] = (family, runs[-1][1], runs[-1][2] + b - a)  # the same id again, next in line
            else:
                runs.append((family, a, b - a))
        return runs
    j = 0  # blocks straddling two trace blocks: one run each; the blocks inside trace block f: one run
    while j < n:
        first, last = j * block_size // size, ((j + 1) * block_size - 1) // size
        off = j * block_size - first * size
        if first != last:
            runs.append((("straddle", first, ids[first:last + 1], off), 0, 1))
            j += 1
            continue
        end = min(n, (first + 1) * size // block_size)
        runs.append((("within", first, ids[first], off % block_size), off // block_size, end - j))
        j = end
    return runs


_LANES: dict[int, np.ndarray] = {}


def _lanes(per: int, rows: int) -> np.ndarray:
    """``[r, j] = (r * per + j) * 4 + 1`` for ``rows`` trace blocks of ``per`` blocks (kept: a prompt's keys in
    three numpy calls instead of seven)."""
    lanes = _LANES.get(per)
    if lanes is None or len(lanes) < rows:
        r = np.arange(max(rows, 2 * len(lanes) if lanes is not None else 64), dtype=np.int64)
        lanes = _LANES[per] = (r[:, None] * per + np.arange(per, dtype=np.int64)) * 4 + 1
    return lanes[:rows]


def shared_blocks(spec: tuple | None, num_tokens: int, block_size: int) -> int:
    """How many leading keys of ``block_hashes(spec, _, num_tokens, block_size)`` other requests may share (the
    rest are the request's own)."""
    n = num_tokens // block_size
    if spec is None:
        return 0
    if spec[0] == GROUP:
        return min(n, spec[2][-1] // block_size) if spec[2] else 0
    return min(n, len(spec[1]) * spec[2] // block_size)


def blocks_per_hash_id(spec: tuple | None, block_size: int) -> int | None:
    """How many ``block_size``-token blocks each of a trace's hash ids covers (None: not a whole number, or no
    hash ids): ``shared_keys`` then numbers them 0, 1, .. within each id's run."""
    if spec is None or spec[0] != HASH_IDS or spec[2] % block_size:
        return None
    return spec[2] // block_size


def shareable_tokens(spec: tuple | None, prompt_tokens: int) -> int:
    """Prompt tokens the trace declares as possibly shared with another request (for reuse statistics)."""
    if spec is None:
        return 0
    if spec[0] == HASH_IDS:
        return min(prompt_tokens, len(spec[1]) * spec[2])
    return min(prompt_tokens, spec[2][-1] if spec[2] else 0)
