"""Calibration, the top layer: it measures the engine and fits and checks the simulator's cost model.

Timing the engine's ops on the current torch device (``profiler`` with ``op_bench``, ``host_bench``,
``iteration``, ``collectives``, ``timing``), which shapes to time (``grid``), writing profiles in the
format ``sim.cost.profile_format`` defines (``profile_writer``), a profile's fit report (``report``),
the ``servesim calibrate`` command (``cli``), and validation of the simulator against the engine
(``calibration.validate``). Only the measuring modules import torch.
"""
