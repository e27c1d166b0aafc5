"""Calibration: time the engine's ops (``engine.ops.OPS``) on the current torch device and store them as a profile.

Importing this package (and ``grid``, ``profile_io``, ``fit``, ``report``, ``cli``) does not
import torch; only ``timing``, ``profiler`` and ``collectives`` need it, to measure.
"""
