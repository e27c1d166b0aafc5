"""plan --speculative-config: vLLM V1 configurations sized without and with speculation, the others without."""

from __future__ import annotations

import subprocess
import sys

from sim.capacity.candidates import enumerate_candidates
from sim.serving.simulator import SimConfig

EAGLE3 = '{"method": "eagle3", "num_speculative_tokens": 3}'


def test_vllm_v1_is_planned_with_and_without_speculation_and_the_others_without():
    base = SimConfig(speculative_config=EAGLE3)
    cands = enumerate_candidates("llama-3.1-8b", ["h100-sxm"], max_gpus=2, tps=[1], pps=[1, 2],
                                 schedulers=["vllm_v1", "sarathi"], base=base)
    got = sorted((c.pp, c.scheduler, c.config.speculative_config is not None) for c in cands)
    assert got == [(1, "sarathi", False), (1, "vllm_v1", False), (1, "vllm_v1+spec", True),
                   (2, "sarathi", False), (2, "vllm_v1", False)]  # PP 2: speculation not modelled, off
    plain = enumerate_candidates("llama-3.1-8b", ["h100-sxm"], max_gpus=1, tps=[1], schedulers=["vllm_v1"])
    assert [c.scheduler for c in plain] == ["vllm_v1"]


def _plan(*flags: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim.cli.main", "plan", "--model", "llama-3.1-8b", "--gpus",
                           "h100-sxm", "--max-gpus", "1", "-n", "50", "--out", str(tmp_path / "p"), *flags],
                          capture_output=True, text=True, timeout=300)


def test_plan_refuses_speculation_it_cannot_size_in_one_line(tmp_path):
    for flags, words in ((("--schedulers", "sarathi", "--speculative-config", EAGLE3), "add vllm_v1"),
                         (("--speculative-config", '{"method": "warp"}'), "method"),
                         (("--spec-acceptance", "0.5"), "add --speculative-config")):
        res = _plan(*flags, tmp_path=tmp_path)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], res.stderr
