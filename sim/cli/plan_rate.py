"""`servesim plan --qps R`: the cheapest deployment meeting the SLO at R, checked by simulation, and its launch
files."""

from __future__ import annotations

import argparse
import os
from typing import Any

#: alternatives listed after the winner
ALTERNATIVES = 4
#: sized deployments tried in turn when the cheapest fails its check at R (scaling out is not exactly linear)
CHECKS = 3


def size_and_check(args: argparse.Namespace, table: Any, candidates: list, workload: Any, slo: Any,
                   seeds: list[int], profile: Any, executor: Any) -> dict[str, Any]:
    """Scale every configuration to R (``args.qps``), check the cheapest few at R in cost order until one passes, and
    write sizing.csv, launch.sh and deployment.yaml for the winner. Returns ``lines`` (the console text), ``ok``
    (a deployment passed) and ``wrote``."""
    from sim.capacity.launch import launch_command, write_launch_files
    from sim.capacity.rate_check import check_at_rate, replicas_label, scaled_config, size_for_rate
    from sim.capacity.search import CapacitySearch
    from sim.outputs.run_folder import naming

    qps = args.qps
    sized = size_for_rate(table[table["mode"] == "aggregated"], qps)
    if sized.empty:
        return {"ok": False, "wrote": False, "lines": [f"--qps {qps:g}: no aggregated configuration met the SLO at "
                                                      f"any rate: nothing to size"]}
    path = os.path.join(args.out, "sizing.csv")
    with naming(path):
        sized.to_csv(path, index=False, float_format="%.6g", lineterminator="\n")
    configs = {c.label: c.config for c in candidates if c.config is not None}
    lines = [f"sized for {qps:g} req/s (capacity scaled out by whole replicas, cheapest first; each checked by "
             f"simulating it at {qps:g} req/s):"]
    winner = None
    for i, row in sized.head(CHECKS).iterrows():
        config = scaled_config(configs[row["config"]], int(row["replicas_needed"]))
        search = CapacitySearch(config, workload, slo, seeds=seeds, pass_rule=args.pass_rule,
                                profile=profile if row.get("cost_model") == "profiled" else None,
                                label=replicas_label(row))
        check = check_at_rate(search, qps, executor=executor)
        lines.append(f"  {_describe(row)}: {'meets' if check['passes'] else 'FAILS'} the SLO at {qps:g} req/s"
                     + ("" if check["passes"] else f" ({', '.join(check.get('broken') or []) or check.get('error')})"))
        if check["passes"]:
            winner = (row, config, check)
            break
    if winner is None:
        lines.append(f"none of the {min(CHECKS, len(sized))} cheapest sized deployments met the SLO at {qps:g} req/s "
                     f"when simulated (replicas do not scale linearly here); see {path}")
        return {"ok": False, "wrote": False, "lines": lines}
    row, config, check = winner
    lines += [f"cheapest at {qps:g} req/s: {_describe(row)}",
              *(f"  {line}" for line in check["lines"][1:])]
    rest = sized[sized.index != row.name].head(ALTERNATIVES)
    if len(rest):
        lines.append("next cheapest (not checked at the rate):")
        lines += [f"  {_describe(r)}" for _, r in rest.iterrows()]
    header = f"servesim plan --qps {qps:g}: {replicas_label(row)}, headroom {row['headroom']:.0%}"
    sh, dep = write_launch_files(args.out, config, header)
    lines += [f"launch (one replica; {sh} and {dep}):", f"  {launch_command(config)}"]
    return {"ok": True, "wrote": True, "lines": lines}


def _describe(row: Any) -> str:
    """One sized deployment in words: replicas, GPUs, price, headroom."""
    price = row.get("usd_per_hour_at_rate")
    import math
    money = "-" if price is None or math.isnan(price) else f"${price:.2f}/h"
    from sim.capacity.rate_check import replicas_label
    return (f"{replicas_label(row)}: {int(row['gpus_needed'])} GPUs, {money}, capacity "
            f"{row['capacity_qps'] / row['replicas'] * row['replicas_needed']:.3g} req/s, headroom "
            f"{row['headroom']:.0%}")

