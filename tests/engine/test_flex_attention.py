"""FlexAttention without a GPU: the block mask from block structure, padded tiles, and the compile count."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from engine.attention import SdpaBackend, build_part, flex_available

if not flex_available():
    pytest.skip("this torch has no FlexAttention", allow_module_level=True)

from engine.flex_attention import FlexBackend, block_structure, padded

BS, HK, H, D = 16, 2, 4, 16


def _random_part(rng: random.Random, max_seqs: int = 6):
    """A part of random chunks over random cached contexts, block ids unique per sequence."""
    seqs, nxt = [], 0
    for _ in range(rng.randint(1, max_seqs)):
        cached, new = rng.choice([0, 3, 40, 130, 300]), rng.choice([1, 5, 64, 129, 250])
        nb = -(-(cached + new) // BS)
        seqs.append((list(range(nxt, nxt + nb)), cached, new))
        nxt += nb
    return build_part(seqs, 0, BS, "cpu"), nxt


def test_block_structure_covers_the_dense_mask_exactly_where_it_matters():
    """Every tile pair with a visible (query, key) is marked; a full tile is all visible and has no padding;
    an unmarked pair has nothing visible; single-sequence tile pairs are classified exactly."""
    from engine.attention import packed_kv_index
    rng = random.Random(0)
    tile = 16
    for _ in range(30):
        part, _ = _random_part(rng)
        _, kv_seq, kv_pos = packed_kv_index(part)
        q_seq, q_pos = part.seq_idx, part.positions
        qp, kp = padded(q_seq.numel(), tile), padded(kv_seq.numel(), tile)
        partial, full = block_structure(q_seq, q_pos, kv_seq, kv_pos, qp, kp, tile)
        dense = torch.zeros(qp, kp, dtype=torch.bool)
        dense[:q_seq.numel(), :kv_seq.numel()] = (q_seq[:, None] == kv_seq[None, :]) & (kv_pos[None, :] <= q_pos[:, None])
        tiles = dense.view(qp // tile, tile, kp // tile, tile)
        any_visible = tiles.any(dim=3).any(dim=1)
        real_q = (torch.arange(qp) < q_seq.numel()).view(-1, tile)
        assert not (partial & full).any()
        assert ((partial | full) >= any_visible).all()  # nothing visible is skipped
        for i, j in full.nonzero().tolist():  # full: every real query sees every key of the tile
            assert tiles[i, real_q[i], j].all() and (j + 1) * tile <= kv_seq.numel()
        qs = torch.cat([q_seq, q_seq[-1:].expand(qp - q_seq.numel())]).view(-1, tile)
        ks = torch.cat([kv_seq, kv_seq[-1:].expand(kp - kv_seq.numel())]).view(-1, tile)
        single = ((qs.min(1).values == qs.max(1).values)[:, None] & (ks.min(1).values == ks.max(1).values)[None, :])
        assert ((partial | full)[single] == any_visible[single]).all()  # exact where a tile pair is one sequence


def test_flex_matches_sdpa_over_many_tiles():
    rng = random.Random(1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        part, blocks = _random_part(rng)
        k_cache = torch.randn(blocks, BS, HK, D, generator=gen)
        v_cache = torch.randn(blocks, BS, HK, D, generator=gen)
        q = torch.randn(part.num_tokens, H, D, generator=gen)
        ref = SdpaBackend().attend(q, k_cache, v_cache, part, D ** -0.5)
        got = FlexBackend("cpu").attend(q, k_cache, v_cache, part, D ** -0.5)
        assert torch.allclose(got, ref, atol=1e-5), (part.num_tokens, part.num_keys)


def test_compiled_flex_compiles_a_handful_of_times_over_calibration_like_shapes():
    """Decodes of 1 to 64 sequences at several contexts, prefill chunks of 16 to 1024 tokens, mixed batches:
    with padded tiles and dynamic shapes, a handful of compiles (1 or many query/key tiles, equal sizes),
    far under the recompile limit the backend sets, which it also makes an error to hit."""
    cfg = torch._dynamo.config
    saved = {name: getattr(cfg, name) for name in ("recompile_limit", "fail_on_recompile_limit_hit")}
    try:
        _count_compiles(cfg)
    finally:  # plain setattr: torch's config module hides a setting that is deleted (monkeypatch's undo may)
        for name, value in saved.items():
            setattr(cfg, name, value)
        torch._dynamo.reset()


def _count_compiles(cfg) -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    flex = FlexBackend("cpu", compile=True, compile_backend=counter)
    assert cfg.recompile_limit >= 64 and cfg.fail_on_recompile_limit_hit
    gen = torch.Generator().manual_seed(2)
    k_cache = torch.randn(700, BS, HK, D, generator=gen)
    v_cache = torch.randn(700, BS, HK, D, generator=gen)
    shapes = [[(1, ctx)] * n for n in (1, 2, 8, 32, 64) for ctx in (16, 500)]
    shapes += [[(chunk, ctx)] for chunk in (16, 64, 256, 1024) for ctx in (0, 512)]
    shapes += [[(200, 64)] + [(1, 300)] * 7, [(37, 0)] * 4]
    for items in shapes:
        seqs, nxt = [], 0
        for new, cached in items:
            nb = -(-(cached + new) // BS)
            seqs.append(([b % 700 for b in range(nxt, nxt + nb)], cached, new))  # shared blocks are fine here
            nxt += nb
        part = build_part(seqs, 0, BS, "cpu")
        q = torch.randn(part.num_tokens, H, D, generator=gen)
        got = flex.attend(q, k_cache, v_cache, part, D ** -0.5)
        assert torch.allclose(got, SdpaBackend().attend(q, k_cache, v_cache, part, D ** -0.5), atol=1e-5)
    print(f"{len(shapes)} shapes, {counter.frame_count} compiles")
    assert 1 <= counter.frame_count <= 6
