"""The run of a deployment: simpy replicas, routers and pipeline stages (cluster), disaggregated prefill and decode
pools (disagg), deployment files (deployment) and the Python API (simulator), re-exported here:

    from sim.serving import SimConfig, simulate
"""

from sim.serving.simulator import SimConfig, SimResult, simulate

__all__ = ["SimConfig", "SimResult", "simulate"]
