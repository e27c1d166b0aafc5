"""The real engine on CPU (float32, tiny model): paged chunked execution against a dense reference."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from engine import ops as engine_ops  # noqa: E402
from engine.attention import SdpaBackend, build_part, flex_available  # noqa: E402
from engine.backends import select_backend  # noqa: E402
from engine.model import LlamaModel  # noqa: E402
from engine.runner import ModelRunner, prompt_token_ids  # noqa: E402
from sim.batch import Batch, BatchItem  # noqa: E402
from sim.catalog.models import ModelSpec  # noqa: E402
from sim.catalog.variants import MoESpec  # noqa: E402
from sim.kv.block_manager import BlockManager  # noqa: E402
from sim.ops import ALL_OPS, FIRST_STAGE_OPS, HOST_OPS, LAST_STAGE_OPS, STAGE_OPS, layer_ops  # noqa: E402
from sim.request import Request  # noqa: E402

TINY = ModelSpec("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                 intermediate_size=128, vocab_size=256, max_context=1024)
# a plain-MLP (GELU), tied-embedding, multi-head variant exercises the other code paths
TINY_GELU_TIED = ModelSpec("tiny-gelu-tied", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=4,
                           intermediate_size=96, vocab_size=256, max_context=1024, rope_theta=500000.0,
                           tie_embeddings=True, gated_mlp=False)
# a mixture of experts with shared experts and a dense first layer (DeepSeek's layout) exercises every MLP kind
TINY_MOE = ModelSpec("tiny-moe-shared", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2,
                     intermediate_size=128, vocab_size=256, max_context=1024,
                     moe=MoESpec(num_experts=4, top_k=2, expert_intermediate_size=32, shared_intermediate_size=48,
                                 first_dense_layers=1))
KV_BLOCKS = 64


def make_runner(spec: ModelSpec = TINY, backend: str = "sdpa", seed: int = 0) -> ModelRunner:
    return ModelRunner(spec, device="cpu", dtype=torch.float32, kv_blocks=KV_BLOCKS, backend=backend, seed=seed)


# ------------------------------------------------------------------ dense reference (independent)

def dense_logits(spec: ModelSpec, state: dict, ids: list[int]) -> torch.Tensor:
    """Full causal forward with no cache, in float64, from HF-named weights: logits at every position."""
    w = {k: v.double() for k, v in state.items()}
    t, h, hk, d = len(ids), spec.num_heads, spec.num_kv_heads, spec.head_dim
    inv = 1.0 / spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.outer(torch.arange(t, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]

    def rope(x):
        return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin

    def rms(x, g):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + spec.norm_eps) * g

    causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        a = rms(x, w[p + "input_layernorm.weight"])
        q = rope((a @ w[p + "self_attn.q_proj.weight"].T).view(t, h, d))
        k = rope((a @ w[p + "self_attn.k_proj.weight"].T).view(t, hk, d)).repeat_interleave(h // hk, 1)
        v = (a @ w[p + "self_attn.v_proj.weight"].T).view(t, hk, d).repeat_interleave(h // hk, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
        o = torch.einsum("hqk,khd->qhd", probs, v).reshape(t, h * d)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        m = rms(x, w[p + "post_attention_layernorm.weight"])
        if spec.is_moe_layer(i):
            x = x + dense_moe_mlp(spec, w, p, m)
            continue
        if spec.gated_mlp:
            m = torch.nn.functional.silu(m @ w[p + "mlp.gate_proj.weight"].T) * (m @ w[p + "mlp.up_proj.weight"].T)
        else:
            m = torch.nn.functional.gelu(m @ w[p + "mlp.up_proj.weight"].T, approximate="tanh")
        x = x + m @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def dense_moe_mlp(spec: ModelSpec, w: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    """A MoE layer's MLP from HF Mixtral-named weights, token by token, every expert computed densely.

    Routing as HF Mixtral writes it (softmax over all experts, keep the top k, renormalise), not the
    engine's form (softmax over the top-k logits); the two are equal, which this checks too.
    """
    moe = spec.moe

    def swiglu(v, gate, up, down):
        return (torch.nn.functional.silu(v @ w[gate].T) * (v @ w[up].T)) @ w[down].T

    probs = (x @ w[p + "block_sparse_moe.gate.weight"].T).softmax(-1)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        chosen = probs[t].argsort(descending=True)[:moe.top_k]
        for j in chosen.tolist():
            e = f"{p}block_sparse_moe.experts.{j}."
            out[t] += probs[t, j] / probs[t, chosen].sum() * swiglu(x[t], e + "w1.weight", e + "w3.weight",
                                                                     e + "w2.weight")
    if moe.shared_intermediate_size:
        s = p + "mlp.shared_experts."
        out += swiglu(x, s + "gate_proj.weight", s + "up_proj.weight", s + "down_proj.weight")
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# ------------------------------------------------------------------ driving batches without a scheduler

def run_step(runner: ModelRunner, bm: BlockManager, plan: list[tuple[Request, int]],
             logits_by_pos: dict | None = None) -> list[int | None]:
    """Allocate blocks, execute one batch, advance the requests as the scheduler would."""
    items = []
    for req, new in plan:
        bm.grow(req, req.num_computed + new)
        items.append(BatchItem(req, new, req.num_computed))
    before = [(r.num_computed, r.num_generated) for r, _ in plan]
    out = runner.execute(Batch(items), all_logits=logits_by_pos is not None)
    assert [(r.num_computed, r.num_generated) for r, _ in plan] == before, "runner must not touch counters"
    for (req, new), item, tok, lg in zip(plan, items, out, runner.last_logits):
        if logits_by_pos is not None:
            for j in range(new):
                logits_by_pos[(req.request_id, item.num_cached_tokens + j)] = lg[j]
        req.num_computed += new
        if req.num_computed == req.num_known:
            assert tok is not None
            req.num_generated += 1
        else:
            assert tok is None
    return out


def mixed_schedule(runner: ModelRunner, logits_by_pos: dict | None = None) -> list[Request]:
    """Three requests with chunked prefills (sizes 1, 7 < block, 16, 5, 23 ...) and decodes, mixed per batch."""
    bm = BlockManager(KV_BLOCKS, runner.block_size)
    a = Request("a", 0.0, prompt_tokens=45, output_tokens=6)
    b = Request("b", 0.0, prompt_tokens=20, output_tokens=6)
    c = Request("c", 0.0, prompt_tokens=33, output_tokens=6)
    chunks = {"a": [1, 7, 16, 5, 16], "b": [20], "c": [10, 23]}
    start = {"a": 0, "b": 1, "c": 3}  # staggered arrivals make prefill + decode batches
    for step in range(10):
        plan = []
        for r in (a, b, c):
            if step < start[r.request_id] or r.is_finished:
                continue
            todo = chunks[r.request_id]
            plan.append((r, todo.pop(0) if todo else 1))
        run_step(runner, bm, plan, logits_by_pos)
    return [a, b, c]


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("spec", [TINY, TINY_GELU_TIED, TINY_MOE], ids=lambda s: s.name)
def test_paged_chunked_matches_dense_reference(spec):
    runner = make_runner(spec)
    logits = {}
    reqs = mixed_schedule(runner, logits)
    state = runner.model.state_dict()
    for r in reqs:
        toks = runner.token_ids(r)
        assert len(toks) == r.num_known and toks[:r.prompt_tokens] == prompt_token_ids(
            r.request_id, r.prompt_tokens, spec.vocab_size, runner.seed)
        ref = dense_logits(spec, state, toks[:r.num_computed])
        got = torch.stack([logits[(r.request_id, p)] for p in range(r.num_computed)])
        assert rel_err(got, ref) < 1e-4
        # every sampled id is the reference's greedy choice at the position that produced it
        sampled = toks[r.prompt_tokens:]
        assert sampled == ref[r.prompt_tokens - 1:].argmax(-1).tolist()


def test_sdpa_and_flex_backends_agree():
    if not flex_available():
        pytest.skip("this torch has no FlexAttention")
    results = {}
    for backend in ("sdpa", "flex"):
        runner = make_runner(backend=backend)
        assert runner.backend.name == backend
        logits = {}
        reqs = mixed_schedule(runner, logits)
        results[backend] = (logits, [runner.token_ids(r) for r in reqs])
    (ls, ts), (lf, tf) = results["sdpa"], results["flex"]
    assert ts == tf
    keys = sorted(ls)
    assert rel_err(torch.stack([lf[k] for k in keys]), torch.stack([ls[k] for k in keys])) < 1e-4


def test_attention_backends_on_a_random_part():
    """Backends agree directly on random caches, for a part with mixed chunk and context lengths."""
    gen = torch.Generator().manual_seed(1)
    bs, hk, h, d = 16, 2, 4, 16
    k_cache = torch.randn(12, bs, hk, d, generator=gen)
    v_cache = torch.randn(12, bs, hk, d, generator=gen)
    seqs = [([3, 7, 1], 17, 13), ([0, 5], 0, 1), ([9, 2, 4, 11], 60, 1), ([6], 3, 12)]
    part = build_part(seqs, 0, bs, "cpu")
    q = torch.randn(part.num_tokens, h, d, generator=gen)
    ref = SdpaBackend().attend(q, k_cache, v_cache, part, d ** -0.5)
    # independent check of sequence 0, query 5 (absolute position 22, keys 0..22)
    keys = torch.cat([k_cache[b] for b in (3, 7)])[:23].repeat_interleave(2, 1)
    vals = torch.cat([v_cache[b] for b in (3, 7)])[:23].repeat_interleave(2, 1)
    p = (torch.einsum("hd,khd->hk", q[5], keys) * d ** -0.5).softmax(-1)
    assert torch.allclose(ref[5], torch.einsum("hk,khd->hd", p, vals), atol=1e-5)
    if flex_available():
        part.cache.clear()
        got = select_backend("cpu", "flex").attend(q, k_cache, v_cache, part, d ** -0.5)
        assert torch.allclose(got, ref, atol=1e-5)


def test_greedy_ids_same_whole_or_chunked():
    outs = []
    for chunks in ([37], [1, 16, 3, 17], [5, 5, 5, 5, 5, 5, 7]):
        runner = make_runner()
        bm = BlockManager(KV_BLOCKS, runner.block_size)
        r = Request("same", 0.0, prompt_tokens=37, output_tokens=8)
        for c in chunks:
            run_step(runner, bm, [(r, c)])
        while not r.is_finished:
            run_step(runner, bm, [(r, 1)])
        outs.append(runner.token_ids(r)[r.prompt_tokens:])
    assert len(outs[0]) == 8
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("spec", [TINY, TINY_MOE], ids=lambda s: s.name)
def test_layer_runs_exactly_the_engine_ops(monkeypatch, spec):
    runner = make_runner(spec)
    calls: list[str] = []
    for name, fn in list(engine_ops.OPS.items()):
        def wrapped(*args, _fn=fn, _name=name, **kwargs):
            calls.append(_name)
            return _fn(*args, **kwargs)
        monkeypatch.setitem(engine_ops.OPS, name, wrapped)
    bm = BlockManager(KV_BLOCKS, runner.block_size)
    r = Request("r", 0.0, prompt_tokens=9, output_tokens=2)
    run_step(runner, bm, [(r, 9)])
    layers = [op for i in range(spec.num_layers) for op in layer_ops(spec.is_moe_layer(i))]
    expected = list(FIRST_STAGE_OPS) + layers + list(STAGE_OPS) + list(LAST_STAGE_OPS)
    assert calls == expected
    assert set(engine_ops.OPS) == set(ALL_OPS) - set(HOST_OPS) >= set(expected)
    if spec is not TINY:
        return

    # patching one op changes what the model computes
    def run_logits():
        rn = make_runner()
        bm = BlockManager(KV_BLOCKS, rn.block_size)
        q = Request("q", 0.0, prompt_tokens=9, output_tokens=2)
        run_step(rn, bm, [(q, 9)])
        return rn.last_logits[0]

    monkeypatch.undo()
    base = run_logits()
    monkeypatch.setitem(engine_ops.OPS, "act", lambda x, gated=True: 2.0 * engine_ops.act(x, gated))
    assert not torch.allclose(run_logits(), base)


@pytest.mark.parametrize("spec", [TINY, TINY_MOE], ids=lambda s: s.name)
def test_state_dict_round_trip_and_checkpoint(tmp_path, spec):
    runner = make_runner(spec)
    state = runner.model.state_dict()
    other = LlamaModel(spec, dtype=torch.float32, seed=123)
    assert not torch.equal(other.layers[0].qkv, runner.model.layers[0].qkv)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), state.values()))
    assert other.num_bytes == spec.weight_bytes(4)  # every tensor counted, as the catalogue sizes the model
    st = pytest.importorskip("safetensors.torch")
    st.save_file(state, str(tmp_path / "model.safetensors"))
    loaded = ModelRunner(spec, device="cpu", dtype=torch.float32, kv_blocks=8, checkpoint=tmp_path)
    assert torch.equal(loaded.model.lm_head, runner.model.lm_head)


def test_runner_inputs_timing_and_errors():
    runner = make_runner()
    bm = BlockManager(KV_BLOCKS, runner.block_size)
    r = Request("r", 0.0, prompt_tokens=20, output_tokens=3)
    out = run_step(runner, bm, [(r, 12)])
    assert out == [None] and set(runner.last_timing) >= {"host_s", "device_s", "num_tokens", "backend"}
    assert runner.last_timing["num_tokens"] == 12 and runner.last_timing["device_s"] > 0
    # a batch past the known tokens, or without KV blocks, is refused
    with pytest.raises(ValueError):
        runner.execute(Batch([BatchItem(r, 9, 12)]))
    fresh = Request("f", 0.0, prompt_tokens=20, output_tokens=3)
    with pytest.raises(ValueError):
        runner.execute(Batch([BatchItem(fresh, 20, 0)]))
    with pytest.raises(ValueError):
        select_backend("cpu", "nope")
    with pytest.raises(ValueError):
        select_backend("cpu", "flash")
    assert select_backend("cpu").name == "sdpa"
    # prompt ids are reproducible per (seed, request id) and differ between requests
    assert prompt_token_ids("x", 10, 256) == prompt_token_ids("x", 10, 256) != prompt_token_ids("y", 10, 256)


def test_random_weights_stay_finite_over_many_layers():
    deep = ModelSpec("deep", num_layers=48, hidden_size=64, num_heads=4, num_kv_heads=2,
                     intermediate_size=128, vocab_size=256, max_context=256)
    runner = ModelRunner(deep, device="cpu", dtype=torch.float32, kv_blocks=8)
    bm = BlockManager(8, runner.block_size)
    r = Request("r", 0.0, prompt_tokens=40, output_tokens=2)
    run_step(runner, bm, [(r, 40)], {})
    lg = runner.last_logits[0]
    assert torch.isfinite(lg).all() and 0.1 < float(lg.std()) < 100
