"""The kernel-database cost model against the measured tables it reads (skipped without the kernels extra)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pyarrow")
from sim.cost.kernels import database as db  # noqa: E402

try:
    db.data_dir()
except db.KernelDatabaseError:
    pytest.skip("aiconfigurator-core is not installed (pip install -e '.[kernels]')", allow_module_level=True)

from sim.cli.cost import iteration_batch  # noqa: E402
from sim.cli.main import main  # noqa: E402
from sim.cost.kernels.lookups import equivalent_prefill  # noqa: E402
from sim.cost.kernels.model import KernelCostModel  # noqa: E402
from sim.serving.simulator import SimConfig, simulate  # noqa: E402
from sim.workload.trace import read_trace  # noqa: E402
from tests.paths import EXAMPLE_TRACE  # noqa: E402


@pytest.fixture(scope="module")
def h100() -> KernelCostModel:
    return KernelCostModel("llama-2-7b", "h100-sxm")


def _table(model: KernelCostModel, table: str):
    return db.read_table(model.refs[table].path)


def _gemm_ms(model: KernelCostModel, m: int, n: int, k: int) -> float:
    t = _table(model, "gemm")
    row = t[(t.gemm_dtype == "bfloat16") & (t.m == m) & (t.n == n) & (t.k == k)]
    assert len(row) == 1
    return float(row.latency.iloc[0])


def test_gemm_prices_are_the_measured_values_at_measured_shapes(h100):
    # Llama-2-7B on one GPU: qkv is [m, 4096] x [4096, 12288], o_proj [m, 4096] x [4096, 4096]: both on the grid
    for m in (1, 64, 257, 4096):
        ops = h100.token_op_times(m, 1)
        assert ops["qkv_proj"][0] == pytest.approx(_gemm_ms(h100, m, 12288, 4096) * 1e-3, rel=1e-12)
        assert ops["o_proj"][0] == pytest.approx(_gemm_ms(h100, m, 4096, 4096) * 1e-3, rel=1e-12)
        assert "gemm_perf.parquet" in ops["qkv_proj"][1] and ops["qkv_proj"][1].startswith("kernels:")


def test_gemm_interpolation_stays_between_the_measured_neighbours(h100):
    lo, hi = _gemm_ms(h100, 257, 12288, 4096), _gemm_ms(h100, 512, 12288, 4096)
    prev = lo
    for m in (300, 384, 450, 511):
        t = h100.token_op_times(m, 1)["qkv_proj"][0] * 1e3
        assert min(lo, hi) <= t <= max(lo, hi)
        assert t >= prev - 1e-12  # monotone where the measurements are
        prev = t
    # down_proj k = 11008 lies between the measured 10240 and 12288: bilinear, between the two shapes
    a, b = _gemm_ms(h100, 512, 4096, 10240), _gemm_ms(h100, 512, 4096, 12288)
    t = h100.token_op_times(512, 1)["down_proj"]
    assert a <= t[0] * 1e3 <= b and "interpolated in n,k" in t[1]


def test_beyond_the_measured_rows_the_roofline_extends_the_edge(h100):
    t, src = h100.token_op_times(40000, 1)["qkv_proj"]
    edge = _gemm_ms(h100, 32768, 12288, 4096) * 1e-3
    assert src.endswith("+edge") and t > edge
    assert t == pytest.approx(edge * h100._gemm_roofline(40000, 12288, 4096) / h100._gemm_roofline(32768, 12288, 4096))


def test_prefill_attention_is_exact_at_measured_lengths_and_monotone_in_context(h100):
    t = _table(h100, "context_attention")
    rows = t[(t.num_heads == 32) & (t.num_key_value_heads == 32) & (t.head_dim == 128) & (t.batch_size == 1)
             & (t.kv_cache_dtype == "bfloat16") & (t.window_size == 0) & (t.kernel_source == "vllm_flash_attn_fa3")]
    for isl in (512, 2048):
        want = float(rows[rows.isl == isl].latency.iloc[0]) * 1e-3
        got, src = h100.attn_prefill(iteration_batch([isl], [], 0, 1))
        assert got == pytest.approx(want, rel=1e-12) and "context_attention_perf" in src
    assert equivalent_prefill(512, 0) == pytest.approx(512)
    prices = [h100.attn_prefill(iteration_batch([256], [p], 0, 1))[0] for p in (0, 256, 1024, 4096)]
    assert prices == sorted(prices) and prices[-1] > prices[0]


def test_decode_attention_is_exact_at_measured_points():
    model = KernelCostModel("llama-3-8b", "h100-sxm")  # 32 query heads, 8 KV heads: in the table, no folding
    t = _table(model, "generation_attention")
    rows = t[(t.num_heads == 32) & (t.num_key_value_heads == 8) & (t.head_dim == 128) & (t.batch_size == 64)
             & (t.step == 1023) & (t.kv_cache_dtype == "bfloat16") & (t.window_size == 0)
             & (t.kernel_source == "vllm_flash_attn_fa3")]
    got, src = model.attn_decode(64, 64 * 1024)
    assert got == pytest.approx(float(rows.latency.iloc[0]) * 1e-3, rel=1e-12)
    assert "generation_attention_perf" in src and "folded" not in src


def test_every_op_names_its_source(h100):
    batch = iteration_batch([512], [1024], 32, 2048)
    src = h100.breakdown_sources(batch, 0)
    for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head", "attn_prefill", "attn_decode"):
        assert src[op].startswith("kernels:h100_sxm/vllm/"), (op, src[op])
    for op in ("input_norm", "rotary", "act", "residual_add", "embedding", "sampling", "host_overhead"):
        assert src[op] == "roofline"
    assert sum(h100.breakdown(batch, 0).values()) == pytest.approx(h100.stage_cost(batch, 0).time)


def test_all_reduce_uses_the_graph_kernel_for_decode_only_iterations():
    model = KernelCostModel("llama-2-7b", "h100-sxm", tp=2)
    decode = model.breakdown_sources(iteration_batch([], [], 8, 512), 0)["tp_all_reduce"]
    mixed = model.breakdown_sources(iteration_batch([64], [], 8, 512), 0)["tp_all_reduce"]
    assert "custom_allreduce_perf" in decode and "graph" in decode and "eager" in mixed


def test_a_gpu_without_a_database_is_refused_in_one_line(capsys):
    with pytest.raises(db.KernelDatabaseError, match="no measured kernel database for GPU a40; GPUs with one: "):
        KernelCostModel("llama-2-7b", "a40")
    assert main(["simulate", "-n", "5", "--gpu", "a40", "--cost-model", "kernels", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "h100-sxm" in err
    with pytest.raises(db.KernelDatabaseError, match="versions with one"):
        KernelCostModel("llama-2-7b", "h100-sxm", kernel_db="vllm:9.9.9")


def test_cost_json_fields(capsys):
    rc = main(["cost", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--tp", "2", "--cost-model", "kernels",
               "--prefill", "512", "--prefill-context", "1024", "--decodes", "32", "--decode-context", "2048", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cost_model"] == "kernels" and d["tp"] == 2 and d["gpu"] == "h100-sxm"
    assert d["batch"] == {"prefill_chunks": [[512, 1024]], "decodes": 32, "decode_context": 2048}
    ops = d["stages"][0]["ops"]
    assert ops["qkv_proj"]["source"].startswith("kernels:") and ops["input_norm"]["source"] == "roofline"
    total = sum(v["seconds"] for v in ops.values())
    assert d["stages"][0]["device_s"] == pytest.approx(total)
    assert d["iteration_s"] == pytest.approx(d["stages"][0]["device_s"] + d["host_s"])
    assert d["cost_model_details"]["framework"] == "vllm"


def test_simulating_with_the_kernels_model_is_deterministic_and_names_its_data():
    trace = read_trace(EXAMPLE_TRACE).requests[:60]
    cfg = SimConfig(model="llama-2-7b", gpu="h100-sxm", scheduler="sarathi")
    a = simulate(trace, cfg, cost_model=KernelCostModel("llama-2-7b", "h100-sxm"))
    b = simulate(trace, cfg, cost_model=KernelCostModel("llama-2-7b", "h100-sxm"))
    assert a.requests.equals(b.requests) and a.summary["requests"]["completed"] == 60
    d = a.summary["cost_model"]
    assert d["name"] == "kernels" and d["tables"]["gemm"].startswith("h100_sxm/vllm/")
    assert any(k.startswith("kernels:") for k in d["distinct_prices_by_source"])


def test_capacity_and_plan_price_with_the_kernel_databases(tmp_path, capsys):
    assert main(["capacity", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--cost-model", "kernels", "-n", "40",
                 "--duration", "5", "--seeds", "1", "--json", "--results", str(tmp_path / "cap.jsonl")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["capacity"] > 0 and d["cost_model"].startswith("kernels (AIConfigurator's h100_sxm vllm")
    rec = json.loads((tmp_path / "cap.jsonl").read_text().splitlines()[0])
    assert rec["cost_model"]["name"] == "kernels" and rec["cost_model"]["system"] == "h100_sxm"
    # a plan prices the GPUs with a database from it and says why the others use the roofline
    assert main(["plan", "--model", "llama-2-7b", "--gpus", "a40,h100-sxm", "--max-gpus", "1", "--schedulers",
                 "sarathi", "--cost-model", "kernels", "-n", "30", "--duration", "5", "--seeds", "1", "--out",
                 str(tmp_path / "plan"), "-q"]) == 0
    out = capsys.readouterr()
    assert "the kernel databases: price 1 of 2 configurations" in out.err
    assert "roofline: no measured kernel database for GPU a40" in out.out
    assert main(["capacity", "--cost-model", "kernels", "--profile", str(tmp_path), "-n", "5"]) == 2


def test_moe_experts_are_the_measured_moe_table_at_measured_token_counts():
    """Mixtral-8x7B, TP2 on H100: the fastest bf16 kernel of the table's (4096, 14336, top-2, 8 experts, TP2) rows."""
    from sim.batch import synthetic_batch
    km = KernelCostModel("mixtral-8x7b", "h100-sxm", tp=2)
    ref = km.refs["moe"]
    t = db.read_table(ref.path)
    rows = t[(t.hidden_size == 4096) & (t.inter_size == 14336) & (t.topk == 2) & (t.num_experts == 8)
             & (t.moe_tp_size == 2) & (t.moe_ep_size == 1) & (t.distribution == "balanced")
             & (t.moe_dtype == "bfloat16")]
    assert len(rows)
    for tokens in (16, 256):
        batch = synthetic_batch([100] * tokens, [], prefix="d")
        per_layer = rows[rows.num_tokens == tokens].latency.min() * 1e-3
        assert km.breakdown(batch, 0)["moe_experts"] == pytest.approx(32 * per_layer, rel=1e-9)
        assert "moe_perf" in km.breakdown_sources(batch, 0)["moe_experts"]
    assert km.breakdown_sources(batch, 0)["moe_router"] == "roofline"


def test_moe_shapes_without_rows_fall_back_to_the_roofline_and_say_so():
    from sim.batch import synthetic_batch
    km = KernelCostModel("tiny-moe", "h100-sxm")  # no table measures a 4-expert, 64-wide MoE
    assert any("moe_experts from the roofline" in n for n in km.attention_notes)
    assert km.breakdown_sources(synthetic_batch([100] * 8, [], prefix="d"), 0)["moe_experts"] == "roofline"
    ds = KernelCostModel("deepseek-v3", "h100-sxm", tp=8, ep=8)  # its FP8 checkpoint: block-scaled FP8 rows
    assert "fp8_block" in ds.breakdown_sources(synthetic_batch([100] * 8, [], prefix="d"), 0)["moe_experts"]


def test_fp8_weights_read_the_fp8_gemm_rows_on_hopper():
    from sim.batch import synthetic_batch
    b = synthetic_batch([], [(2048, 0)], prefix="p")
    bf16 = KernelCostModel("llama-3.1-8b", "h100-sxm").breakdown(b, 0)["gate_up_proj"]
    fp8 = KernelCostModel("llama-3.1-8b", "h100-sxm", weight_dtype="fp8").breakdown(b, 0)["gate_up_proj"]
    assert fp8 < 0.8 * bf16  # a compute-bound prefill GEMM, measured faster in FP8


def test_ep_dispatch_and_combine_are_deepeps_measured_times():
    """DeepSeek-V3 at EP8 on H100: 64 decodes are 8 tokens a rank, priced by DeepEP's low-latency kernels."""
    from sim.batch import synthetic_batch
    km = KernelCostModel("deepseek-v3", "h100-sxm", tp=8, ep=8)
    t = db.read_table(km.refs["moe_a2a"].path)
    rows = t[(t.ep_size == 8) & (t.node_num == 1) & (t.hidden_size == 7168) & (t.topk == 8) & (t.num_experts == 256)
             & (t.comm_dtype == "default") & (t.comm_backend == "deepep_ll") & (t.num_tokens == 8)]
    batch = synthetic_batch([1000] * 64, [], prefix="d")
    dispatch = rows[rows.phase == "dispatch"].latency.iloc[0] * 1e-6
    assert km.breakdown(batch, 0)["ep_dispatch"] == pytest.approx(58 * dispatch, rel=1e-9)  # 58 MoE layers
    src = km.breakdown_sources(batch, 0)
    assert "moe_a2a_perf" in src["ep_dispatch"] and src["ep_combine"].endswith("+roofline-gather")
