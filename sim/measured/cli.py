"""``servesim validate --measured RESULT``: replay a benchmark client's measured run in the simulator and report
predicted against measured on the client's definitions. No engine and no torch on this path.

The flags live on ``validate``'s parser (calibration/validate/cli.py registers them with ``add_measured_arguments``);
the engine-only ones are refused with --measured, and these measured-only ones without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from sim.cli.values import MAX_COUNT, int_range, parallel_degree, replica_count
from sim.measured.vllm_engine import MODELS

#: validate's flags that only the engine run uses: (dest, flag) refused with --measured
ENGINE_ONLY = {"device": "--device", "dtype": "--dtype", "backend": "--backend", "warmup": "--warmup",
               "threads": "--threads", "op_check": "--op-check", "repeats": "--repeats",
               "full_calibration": "--full-calibration", "schedulers": "--schedulers", "trace": "--trace",
               "trace_format": "--trace-format", "qps": "--qps", "loads": "--load", "offline": "--offline",
               "num_requests": "-n", "prompt_len": "--prompt-len", "output_len": "--output-len",
               "lengths_from": "--lengths-from", "sessions": "--sessions", "system_prompt": "--system-prompt",
               "max_total_tokens": "--max-total-tokens", "arrival": "--arrival", "cv": "--cv",
               "slo_tbt_p99": "--slo-tbt-p99", "slo_delay_p50": "--slo-sched-delay-p50",
               "capacity_duration": "--capacity-duration", "capacity_seeds": "--capacity-seeds",
               "max_concurrency": "--max-concurrency", "think_time": "--think-time",
               "speculative_config": "--speculative-config"}
#: store_false flags of validate's engine run: (dest, flag, value when given)
ENGINE_SWITCHES = (("cuda_graphs", "--no-cuda-graphs", False), ("plots", "--no-plots", False),
                   ("timeline", "--no-timeline", False))
#: the flags added here, refused without --measured
MEASURED_ONLY = {"stage": "--stage", "deployment": "--deployment", "gpu": "--gpu", "tp": "--tp", "pp": "--pp",
                 "replicas": "--replicas", "scheduler": "--scheduler", "frontend": "--frontend",
                 "enable_expert_parallel": "--enable-expert-parallel", "cost_model": "--cost-model",
                 "kernel_db": "--kernel-db", "async_scheduling": "--async-scheduling"}
#: validate's shared flags -> SimConfig fields (used only when given: the run's own settings come first)
SHARED = {"model": "model", "max_model_len": "max_model_len", "max_batch": "max_batch_size",
          "chunk_align": "chunk_align", "block_size": "block_size", "kv_blocks": "kv_blocks",
          "gpu_mem_util": "gpu_memory_utilization", "watermark": "watermark"}


def add_measured_arguments(p: argparse.ArgumentParser) -> None:
    """--measured and the simulated deployment's flags (simulate's names; vLLM's where vLLM has them)."""
    g = p.add_argument_group("measured run (--measured: no engine; the simulator against a benchmark client's "
                             "result)")
    g.add_argument("--measured", default=None, metavar="FILE_OR_DIR",
                   help="a benchmark result to replay and compare: vllm bench serve --save-result JSON, an "
                        "inference-perf report folder, a GuideLLM JSON report, an AIPerf artifacts folder, or "
                        "vLLM engine timestamps (requests.jsonl + meta.json, or a tree of such runs)")
    g.add_argument("--stage", type=int_range(0, MAX_COUNT), default=None, metavar="N",
                   help="only the N-th (0-based) load stage or benchmark of the result (default: every one)")
    g.add_argument("--deployment", default=None, metavar="FILE",
                   help="the simulated deployment from a YAML or TOML file (sim/serving/deployment.py) instead of "
                        "the flags and the result's own settings")
    g.add_argument("--gpu", default=None, help="GPU from the catalogue (`servesim gpus`)")
    g.add_argument("--tp", type=parallel_degree, default=None, help="tensor-parallel degree")
    g.add_argument("--pp", type=parallel_degree, default=None, help="pipeline-parallel stages")
    g.add_argument("--replicas", type=replica_count, default=None, help="replicas (vLLM's data parallelism)")
    g.add_argument("--scheduler", default=None, help="batching policy (default: vllm_v1)")
    g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="vLLM V1's async engine loop (default: as the run recorded, else the policy's)")
    g.add_argument("--frontend", default=None, metavar="vllm|none|custom:...",
                   help="the API server model between the client and the engine (see `servesim simulate --help`; "
                        "default: vllm for vllm_v1 on client-side results, none for engine timestamps)")
    g.add_argument("--enable-expert-parallel", action="store_true", default=None,
                   help="vLLM's flag: expert parallelism over the TP group")
    g.add_argument("--cost-model", choices=("roofline", "kernels"), default=None,
                   help="roofline (default) or kernels (AIConfigurator's measured kernel databases); --profile DIR "
                        "prices from a calibration profile instead")
    g.add_argument("--kernel-db", default=None, metavar="FRAMEWORK[:VERSION]",
                   help="with --cost-model kernels: whose measurements")


def _given(args: argparse.Namespace) -> dict[str, str]:
    return dict(getattr(args, "given_flags", ()))


def refuse_measured_only(args: argparse.Namespace) -> None:
    """The engine run refuses the flags that only --measured uses."""
    given = [flag for dest, flag in MEASURED_ONLY.items() if getattr(args, dest, None) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} set the simulated deployment of --measured: add --measured RESULT "
                         "(the engine run takes --model and the scheduler flags)")


def _refuse_engine_flags(args: argparse.Namespace) -> None:
    noted = _given(args)
    given = [noted.get(d, f) for d, f in ENGINE_ONLY.items() if d in noted]
    given += [flag for dest, flag, value in ENGINE_SWITCHES if getattr(args, dest, None) is value]
    if given:
        raise ValueError(f"--measured replays a measured run in the simulator, with no engine and no generated "
                         f"workload: drop {', '.join(given)}")
    if args.deployment:
        shared = [noted[d] for d in SHARED if d in noted] + [
            f for d, f in MEASURED_ONLY.items() if d not in ("stage", "deployment", "cost_model", "kernel_db")
            and getattr(args, d, None) not in (None, False)]
        if shared or args.token_budget or args.enable_prefix_caching is not None:
            raise ValueError(f"--deployment {args.deployment} sets the whole deployment: drop "
                             f"{', '.join(shared) or 'the scheduler and KV flags'} (or change the file)")


def config_for(run: Any, args: argparse.Namespace) -> Any:
    """The SimConfig to replay ``run`` on: --deployment, else the run's own settings overridden by the flags."""
    from sim.serving.simulator import SimConfig
    if args.deployment:
        from sim.serving.deployment import load_deployment, with_run_options
        config = load_deployment(args.deployment)
        if not isinstance(config, SimConfig):
            raise ValueError(f"--deployment {args.deployment}: --measured replays an aggregated deployment (per-token "
                             "times are not recorded for disaggregated pools yet)")
        return with_run_options(config, strict=args.strict, seed=args.seed)
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    kw = {k: v for k, v in run.deployment.items() if k in fields}
    noted = _given(args)
    kw.update({field: getattr(args, dest) for dest, field in SHARED.items() if dest in noted})
    for dest in ("gpu", "tp", "pp", "replicas", "scheduler", "async_scheduling", "frontend"):
        if getattr(args, dest) is not None:
            kw[dest] = getattr(args, dest)
    if args.enable_expert_parallel:
        kw["ep"] = kw.get("tp", 1)
    kw.setdefault("scheduler", "vllm_v1")
    if args.token_budget:
        budget = _budget_for(args.token_budget, kw["scheduler"])
        if budget is not None:
            kw["token_budget"] = budget
    if args.enable_prefix_caching is not None:
        kw["enable_prefix_caching"] = args.enable_prefix_caching
    hint = run.deployment.get("hf_model")
    if "model" not in kw and hint:
        kw["model"] = MODELS.get(hint) or _catalogue_name(hint)
        if kw["model"] is None:
            del kw["model"]
    if "model" not in kw:
        raise ValueError(f"{run.source}: the result names no model servesim's catalogue knows"
                         f"{f' ({hint})' if hint else ''}: give --model (a catalogue name or a config.json)")
    if "gpu" not in kw:
        raise ValueError(f"{run.source}: the result does not say which GPU served it: give --gpu (`servesim gpus`)")
    return SimConfig(**kw, strict=args.strict, seed=args.seed)


def _catalogue_name(hf_id: str) -> str | None:
    """The catalogue's name of a Hugging Face model id (the catalogue accepts HF ids), or None."""
    from sim.catalog.models import MODELS as CATALOGUE
    from sim.catalog.models import get_model
    from sim.catalog.spec import UnknownModelError
    try:
        spec = get_model(hf_id)
    except (UnknownModelError, ValueError, OSError):
        return None
    return next((k for k, v in CATALOGUE.items() if v is spec), None)


def _budget_for(text: str, scheduler: str) -> int | None:
    """--token-budget's value for ``scheduler``: ``T`` (every policy) or ``S=T,...`` (validate checked the form)."""
    budgets = {}
    for part in text.split(","):
        key, _, val = part.strip().rpartition("=")
        budgets[key.strip() or "*"] = int(val)
    return budgets.get(scheduler, budgets.get("*"))


def _cost(args: argparse.Namespace, config: Any) -> tuple[Any, Any, str]:
    """(config, cost model or None for the roofline, its description for the report)."""
    from sim.cli.args import cost_model_from_args
    ns = argparse.Namespace(profile=args.profile, cost_model=args.cost_model or "roofline", kernel_db=args.kernel_db,
                            gpu=config.gpu)
    config, cost = cost_model_from_args(ns, config)
    if cost is None:
        return config, None, f"roofline on {config.gpu} (servesim's default)"
    d = cost.describe()
    what = d.get("kind") or d.get("name") or type(cost).__name__
    extra = " ".join(str(d[k]) for k in ("system", "framework", "version") if d.get(k))
    return config, cost, f"{what}{' (' + extra + ')' if extra else ''} on {config.gpu}"


def _figures(run: Any, side: Any, result: Any) -> dict[str, tuple[Any, Any]]:
    """Counts and the span of the run, both sides."""
    import numpy as np
    ok = run.succeeded
    sends = [r.send_time for r in ok if r.send_time is not None and r.latency is not None]
    ends = [r.send_time + r.latency for r in ok if r.send_time is not None and r.latency is not None]
    meas_span = (max(ends) - min(sends)) if sends else run.duration_s
    df = result.requests
    done = df[df["completion_time"].notna()]
    sim_span = float(done["completion_time"].max() - df["arrival_time"].min()) if len(done) else None
    meas_out = sum(r.output_tokens for r in ok) if ok else run.load.get("total_output_tokens")
    sim_out = int(np.nansum(done["generated_tokens"])) if len(done) else 0
    failed = run.load.get("failed")
    if failed is None and run.requests:
        failed = sum(not r.success for r in run.requests)
    return {"requests completed": (len(ok) if ok else run.load.get("completed"), len(done)),
            "requests failed (measured) / not servable (simulated)": (
                failed, int(result.summary["requests"].get("skipped", 0))),
            "duration, first send to last token": (meas_span, sim_span),
            "output tokens/s over that duration": (
                meas_out / meas_span if meas_out and meas_span else None,
                sim_out / sim_span if sim_span else None)}


def prepare_run(run: Any, args: argparse.Namespace) -> tuple[Any, Any, str, Any] | None:
    """(config, cost model, its description, workload) of ``run``, or None when servesim cannot configure it:
    every input check of a run, done before any run is simulated (a refusal is then the only line on stderr)."""
    from sim.measured.replay import build_workload
    if run.not_expressible and not args.deployment:
        return None
    config, cost, cost_text = _cost(args, config_for(run, args))
    config.check()  # an unknown GPU, a TP the heads do not split over, weights that do not fit: before simulating
    return config, cost, cost_text, build_workload(run, args.seed)


def simulate_run(run: Any, args: argparse.Namespace, prepared: tuple[Any, Any, str, Any] | None = None) -> Any:
    """One measured run replayed and compared (an Outcome; not simulated when servesim cannot configure it)."""
    from sim.measured.compare import compare
    from sim.measured.replay import simulate_workload
    from sim.measured.report import Outcome
    from sim.serving.deployment import describe
    prepared = prepared or prepare_run(run, args)
    if prepared is None:  # the measured figures alone, for reference
        import numpy as np

        from sim.measured.compare import Side
        none = Side(ttft=np.array([]), e2e=np.array([]), n=np.array([]), gaps=[])
        return Outcome(run, rows=compare(run, none), skipped=run.not_expressible)
    config, cost, cost_text, work = prepared
    side, result = simulate_workload(run, work, config, cost)
    frontend = result.summary.get("frontend", {}).get("name", "none")
    notes = list(work.notes)
    if run.definitions.clock == "client" and frontend == "none":
        notes.append("no frontend model: simulated latencies are the engine's, without the API server's time "
                     "(give --frontend vllm)")
    return Outcome(run, rows=compare(run, side), workload=work.how, deployment=describe(config), cost=cost_text,
                   figures=_figures(run, side, result), notes=notes)


def cmd_validate_measured(args: argparse.Namespace) -> int:
    """Read --measured, replay each run in the simulator with the deployment, write report.md and report.json."""
    from sim.measured import read_measured_runs
    from sim.measured.report import write_report
    from sim.outputs.run_folder import prepare_out_dir
    from sim.version import __version__
    _refuse_engine_flags(args)
    runs = read_measured_runs(args.measured)
    if args.stage is not None:
        if not 0 <= args.stage < len(runs):
            raise ValueError(f"--stage {args.stage}: {args.measured} holds {len(runs)} run(s) (0 to {len(runs) - 1})")
        runs = [runs[args.stage]]
    prepared = [prepare_run(run, args) for run in runs]
    out = prepare_out_dir(args.out)
    outcomes = []
    for run, prep in zip(runs, prepared):
        print(f"simulating {run.label or run.source} ({len(run.succeeded):,} measured requests)", file=sys.stderr)
        outcomes.append(simulate_run(run, args, prep))
    typed = sys.argv[1:] if sys.argv[1:2] == ["validate"] else ["validate", "--measured", str(args.measured),
                                                                 "--out", str(args.out)]
    command = shlex.join(["servesim", *typed])
    md, js = write_report(Path(out), outcomes, command, __version__)
    for o in outcomes:
        worst = max((abs(r["error_pct"]) for r in o.rows if r["error_pct"] is not None), default=None)
        print(f"{o.run.label or o.run.source}: " + (f"not simulated ({o.skipped})" if o.skipped else
              f"{sum(r['error_pct'] is not None for r in o.rows)} figures compared, largest error "
              f"{'n/a' if worst is None else f'{worst:.0f}%'}"))
    print(f"wrote {md} and {js}")
    return 0
