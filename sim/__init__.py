"""servesim: discrete-event simulation of LLM serving (Orca, vLLM, Sarathi-Serve and more).

The bottom layer: pure Python, no torch, and it imports neither ``engine`` nor ``calibration``.
``sim.simulate`` is the Python API (``sim.serving.simulator.simulate``), imported on first use.
"""

from sim.version import __version__


def simulate(*args, **kwargs):  # noqa: D401 - thin lazy wrapper to keep ``import sim`` light
    """Replay a trace through a simulated deployment; see ``sim.serving.simulator.simulate``."""
    from sim.serving.simulator import simulate as _simulate
    return _simulate(*args, **kwargs)


__all__ = ["__version__", "simulate"]
