"""servesim: discrete-event simulation of LLM serving (Orca, vLLM, Sarathi-Serve and more)."""

__version__ = "0.1.0"


def simulate(*args, **kwargs):  # noqa: D401 - thin lazy wrapper to keep ``import sim`` light
    """Replay a trace through a simulated deployment; see ``sim.simulator.simulate``."""
    from sim.simulator import simulate as _simulate
    return _simulate(*args, **kwargs)
