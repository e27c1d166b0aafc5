"""How to run a planned deployment for real: its ``vllm serve`` command line (vLLM-family schedulers), Sarathi-Serve's
launch flags otherwise, and a servesim deployment file that ``servesim simulate --deployment`` reads back.

vLLM's flag names are those of ``vllm serve --help`` (engine arguments: --tensor-parallel-size,
--pipeline-parallel-size, --max-num-seqs, --max-num-batched-tokens, --enable-chunked-prefill, --block-size,
--gpu-memory-utilization, --max-model-len, --enable-expert-parallel, --enable-prefix-caching, --quantization,
--kv-cache-dtype). vllm (v0) needs ``VLLM_USE_V1=0`` on vLLM releases with both engines; sarathi is vLLM v0's
chunked-prefill scheduler (``--enable-chunked-prefill``). Orca and FasterTransformer run in Sarathi-Serve, whose
flags are its flattened config dataclasses (``sarathi/config/config.py``: ``--<section>_<field>``).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

#: the policies vLLM runs itself, and the environment each needs (v0 engine on releases that have both)
VLLM_FAMILY = {"vllm": "VLLM_USE_V1=0 ", "sarathi": "VLLM_USE_V1=0 ", "vllm_v1": ""}
#: vLLM's names of the weight dtypes servesim plans (``--quantization`` for fp8, ``--dtype`` otherwise)
_DTYPE = {"bf16": ("--dtype", "bfloat16"), "fp16": ("--dtype", "float16"), "fp8": ("--quantization", "fp8")}


def _model_name(config: Any) -> str:
    """The model argument: the catalogue name or config path (launch.sh says to put the checkpoint there)."""
    return config.model


def vllm_command(config: Any) -> str:
    """The ``vllm serve`` line of one replica of an aggregated ``config`` (a SimConfig) with a vLLM-family policy."""
    model = config.model_spec()
    args = ["vllm", "serve", _model_name(config), "--tensor-parallel-size", str(config.tp)]
    if config.pp > 1:
        args += ["--pipeline-parallel-size", str(config.pp)]
    if config.ep > 1:
        args += ["--enable-expert-parallel"]
    args += ["--max-model-len", str(model.max_context), "--max-num-seqs", str(config.effective_max_batch_size(model))]
    budget = config.effective_token_budget(model)
    if budget is not None:
        args += ["--max-num-batched-tokens", str(budget)]
    if config.scheduler == "sarathi":
        args += ["--enable-chunked-prefill"]
    elif config.scheduler == "vllm":
        args += ["--no-enable-chunked-prefill"]
    args += ["--block-size", str(config.block_size), "--gpu-memory-utilization", f"{config.gpu_memory_utilization:g}"]
    args += ["--enable-prefix-caching" if config.prefix_caching else "--no-enable-prefix-caching"]
    if config.dtype in _DTYPE:
        args += list(_DTYPE[config.dtype])
    if config.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", config.kv_cache_dtype]
    if getattr(config, "speculative_config", None):  # a +spec winner was sized speculating: vLLM must too
        args += ["--speculative-config", config.speculative_config]
    return VLLM_FAMILY[config.scheduler] + shlex.join(args)


def sarathi_command(config: Any) -> str:
    """Sarathi-Serve's API server line for one replica (Orca, FasterTransformer; its own flattened config flags)."""
    model = config.model_spec()
    section = {"orca": "orca", "faster_transformer": "faster_transformer"}.get(config.scheduler, config.scheduler)
    args = ["python", "-m", "sarathi.entrypoints.openai.api_server", "--model_config_model", _model_name(config),
            "--model_config_max_model_len", str(model.max_context),
            "--parallel_config_tensor_parallel_size", str(config.tp),
            "--parallel_config_pipeline_parallel_size", str(config.pp),
            "--scheduler_config_type", section,
            f"--{section}_scheduler_config_max_num_seqs", str(config.effective_max_batch_size(model)),
            "--cache_config_block_size", str(config.block_size),
            "--worker_config_gpu_memory_utilization", f"{config.gpu_memory_utilization:g}"]
    return shlex.join(args)


def launch_command(config: Any) -> str:
    """One replica's launch line: ``vllm serve`` for the vLLM family, Sarathi-Serve's server otherwise."""
    return vllm_command(config) if config.scheduler in VLLM_FAMILY else sarathi_command(config)


def deployment_text(config: Any) -> str:
    """The deployment file (YAML) of ``config``, every value resolved; ``simulate --deployment`` reads it back."""
    import yaml

    from sim.catalog.models import MODELS
    from sim.serving.deployment import describe
    d = describe(config)
    if d["model"] not in MODELS and Path(str(d["model"])).is_file():  # a config.json relative to the cwd: absolute
        d["model"] = str(Path(d["model"]).resolve())
    return yaml.safe_dump(d, sort_keys=False)


def write_launch_files(out: str | Path, config: Any, header: str) -> tuple[Path, Path]:
    """``out/launch.sh`` (each replica's command, ``header`` as comments) and ``out/deployment.yaml``."""
    from sim.outputs.run_folder import naming
    out = Path(out)
    sh, dep = out / "launch.sh", out / "deployment.yaml"
    cmd = launch_command(config)
    lines = ["#!/bin/sh", *(f"# {h}" for h in header.splitlines()),
             f"# one line per replica ({config.replicas}); give each its GPUs (CUDA_VISIBLE_DEVICES) and port,",
             f"# and replace {config.model} with the checkpoint's Hugging Face id or path",
             cmd]
    with naming(sh):
        sh.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with naming(dep):
        dep.write_text(f"# {header.splitlines()[0]}\n" + deployment_text(config), encoding="utf-8")
    return sh, dep
