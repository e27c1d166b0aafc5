"""The catalogue entries Sarathi-Serve's OSDI'24 evaluation needs (benchmarks/sarathi_serve_eval.py)."""

from __future__ import annotations

import pytest

from sim.catalog.hardware import GiB, get_gpu
from sim.catalog.models import get_model
from sim.serving import SimConfig


def test_a100_pcie_is_the_datasheet_part_with_pairwise_nvlink():
    g = get_gpu("a100-80gb-pcie")
    assert (g.bf16_flops, g.mem_bandwidth, g.mem_bytes) == (312e12, 1935e9, 80 * GiB)
    assert (g.interconnect, g.interconnect_bw) == ("nvlink", 300e9)  # NVLink bridge: 600 GB/s both directions
    assert g.kernel_db == "a100_sxm" and g.roofline is not None and g.roofline.tile == 64


def test_the_evaluated_models_have_their_public_shapes():
    assert get_model("mistralai/Mistral-7B-Instruct-v0.2").name == "mistral-7b"
    f = get_model("tiiuae/falcon-180B")
    assert (f.num_layers, f.hidden_size, f.num_heads, f.num_kv_heads, f.head_dim) == (80, 14848, 232, 8, 64)
    y = get_model("01-ai/Yi-34B")
    assert (y.num_layers, y.hidden_size, y.num_heads, y.num_kv_heads, y.intermediate_size) == (60, 7168, 56, 8, 20480)


@pytest.mark.parametrize("model,gpu,tp,pp,orca_batch", [
    ("mistral-7b", "a100-80gb-pcie", 1, 1, 16), ("yi-34b", "a100-80gb-pcie", 2, 1, 16),
    ("llama-2-70b", "a40", 4, 2, 8), ("falcon-180b", "a100-80gb-pcie", 4, 2, 8)])
def test_each_deployment_fits_the_artifacts_orca_batch_of_max_length_reservations(model, gpu, tp, pp, orca_batch):
    # the yml's Orca batch sizes ("with higher batch size activation and kv cache memory blows up") must fit
    # max_seq_len = 8192 reservations in the KV cache at the artifact's gpu_memory_utilization of 0.85
    blocks = SimConfig(model=model, gpu=gpu, tp=tp, pp=pp, max_model_len=8192, gpu_memory_utilization=0.85).memory()[1]
    assert blocks // (8192 // 16) >= orca_batch
