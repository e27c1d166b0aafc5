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
blocks have consecutive keys within each trace block or group (``sim.block_index`` keeps one entry
per aligned window of 32 such keys: a 512-token Mooncake block in 16-token blocks).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import numpy as np

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


def check_prefix_fields(extra: dict[str, Any]) -> tuple[str, str] | None:
    """(field, reason) when the reuse fields of a trace line are malformed, else None."""
    if HASH_IDS in extra:
        ids = extra[HASH_IDS]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return HASH_IDS, "expected a list of integers"
        if any(not 0 <= i < MAX_ID for i in ids):
            return HASH_IDS, f"expected ids in [0, 2^40) (Mooncake's are small integers), got {max(ids)}"
        size = extra.get(HASH_BLOCK_SIZE, MOONCAKE_BLOCK_SIZE)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            return HASH_BLOCK_SIZE, f"expected a positive integer, got {size!r}"
    if GROUP in extra:
        groups, ends = _as_list(extra[GROUP]), _as_list(extra.get(GROUP_LEN))
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in ends):
            return GROUP_LEN, (f"expected a non-negative integer (or a list, one per group) with {GROUP}, got "
                               f"{extra.get(GROUP_LEN)!r}")
        if len(ends) != len(groups) or any(b < a for a, b in itertools.pairwise(ends)):
            return GROUP_LEN, f"expected one non-decreasing end per group of {GROUP} ({len(groups)}), got {ends!r}"
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
