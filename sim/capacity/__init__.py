"""Capacity planning: one simulated rate (``point``), the SLO capacity search over rates and seeds (``search``),
its resumable results (``results``), workload and SLO specs (``spec``) and the configuration planner (``planner``)."""
