"""The engine's mixture-of-experts layer (CPU, float32): router, routed experts and shared experts against a
float64 reference computed token by token; and a tiny-moe trace served end to end."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from engine import ops as engine_ops  # noqa: E402
from engine.cuda_graphs import use_cuda_graphs  # noqa: E402
from engine.model import LlamaModel  # noqa: E402
from engine.replay import EngineConfig, replay  # noqa: E402
from sim.catalog.models import get_model  # noqa: E402
from sim.catalog.variants import MLASpec  # noqa: E402
from sim.request import TraceRequest  # noqa: E402
from tests.engine.test_model import TINY_MOE, dense_moe_mlp, rel_err  # noqa: E402


def _hidden(tokens: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(tokens, TINY_MOE.hidden_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "routed-only"])
def test_sparse_mlp_matches_a_float64_token_by_token_reference(shared):
    """Every MoE layer of the model (float32) against the float64 reference on the same HF-named weights."""
    spec = TINY_MOE if shared else dataclasses.replace(
        TINY_MOE, name="tiny-moe-routed", moe=dataclasses.replace(TINY_MOE.moe, shared_intermediate_size=0))
    model = LlamaModel(spec, dtype=torch.float32, seed=1)
    w = {k: v.double() for k, v in model.state_dict().items()}
    x = _hidden(37)  # more tokens than experts x top-k: every expert gets a group, most several tokens
    for i, layer in enumerate(model.layers):
        if not spec.is_moe_layer(i):
            assert layer.moe is None and layer.gate_up is not None
            continue
        assert layer.gate_up is None and (layer.moe.shared_gate_up is not None) == shared
        got = model.sparse_mlp(x, layer.moe)
        ref = dense_moe_mlp(spec, w, f"model.layers.{i}.", x.double())
        assert got.dtype == torch.float32 and rel_err(got, ref) < 1e-5


def test_router_picks_the_top_k_experts_with_weights_summing_to_one():
    model = LlamaModel(TINY_MOE, dtype=torch.float32, seed=1)
    router = model.layers[1].moe.router
    x = _hidden(50)
    weights, experts = engine_ops.moe_router(x, router, TINY_MOE.moe.top_k)
    assert weights.shape == experts.shape == (50, 2)
    assert torch.allclose(weights.sum(-1), torch.ones(50), atol=1e-6) and (weights > 0).all()
    assert (experts[:, 0] != experts[:, 1]).all()
    logits = x @ router.T
    chosen = logits.gather(1, experts)
    unchosen = logits.scatter(1, experts, float("-inf"))
    assert (chosen.min(-1).values >= unchosen.max(-1).values).all()
    assert (weights[:, 0] >= weights[:, 1]).all()  # the larger logit gets the larger weight
    assert len(experts.unique()) == TINY_MOE.moe.num_experts  # the random router spreads tokens over all


def test_experts_with_no_tokens_are_skipped_and_dispatch_combine_are_identities(monkeypatch):
    """A batch routed to one expert runs that expert's MLP alone (others cost nothing); ep_* return their input."""
    model = LlamaModel(TINY_MOE, dtype=torch.float32, seed=1)
    m = model.layers[1].moe
    x = _hidden(5)
    experts = torch.full((5, 2), 3)
    experts[:, 1] = 1
    weights = torch.tensor([[0.75, 0.25]]).repeat(5, 1)
    calls = []
    real = engine_ops._gated_mlp

    def counted(v, gate_up, down):
        calls.append(v.shape[0])
        return real(v, gate_up, down)

    monkeypatch.setattr(engine_ops, "_gated_mlp", counted)
    out = engine_ops.moe_experts(x, weights, experts, m.gate_up, m.down)
    assert calls == [5, 5]  # experts 1 and 3, five tokens each
    ref = 0.75 * real(x, m.gate_up[3], m.down[3]) + 0.25 * real(x, m.gate_up[1], m.down[1])
    assert torch.allclose(out, ref, atol=1e-6)
    assert engine_ops.ep_dispatch(x) is x and engine_ops.ep_combine(x) is x
    assert engine_ops.moe_shared(x, out, None, None) is out


def test_tiny_moe_serves_every_request_with_exactly_its_output_tokens():
    trace = [TraceRequest(f"r{i}", 0.0, p, o) for i, (p, o) in enumerate([(37, 9), (5, 12), (20, 7), (64, 5),
                                                                          (16, 10), (50, 8), (3, 3), (90, 6)])]
    cfg = EngineConfig(model="tiny-moe", device="cpu", dtype="float32", backend="sdpa", kv_blocks=64, warmup=1,
                       offline=True)
    res = replay(trace, cfg, scheduler="sarathi", token_budget=32)
    assert res.summary["requests"]["completed"] == len(trace)
    assert {rid: len(ids) for rid, ids in res.token_ids.items()} == {r.request_id: r.output_tokens for r in trace}
    assert (res.requests["generated_tokens"] == res.requests["output_tokens"]).all()
    # chunked prefills and decodes really mixed in one forward pass through the MoE layers
    b = res.batches
    assert ((b["num_prefill_tokens"] > 0) & (b["num_decode_tokens"] > 0)).any()


def test_moe_models_decode_eagerly_on_cuda_and_mla_is_refused():
    assert use_cuda_graphs("cuda", get_model("tiny")) and not use_cuda_graphs("cuda", get_model("tiny-moe"))
    assert not use_cuda_graphs("cpu", get_model("tiny")) and use_cuda_graphs("cpu", get_model("tiny-moe"), True)
    mla = dataclasses.replace(get_model("tiny"), name="tiny-mla", mla=MLASpec(32, 16, 16, 16))
    with pytest.raises(ValueError, match="latent attention"):
        LlamaModel(mla, dtype=torch.float32)
