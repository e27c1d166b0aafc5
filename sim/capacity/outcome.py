"""What a capacity search answers for one deployment (:class:`CapacityResult`), and how a deployment is named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.serving.simulator import SimConfig


def label_of(gpu: str, gpus: int, replicas: int, tp: int, ep: int, pp: int, scheduler: str,
             token_budget: int | None) -> str:
    """E.g. '8x h100-sxm (1 replica x TP8 EP8 PP1) sarathi budget 512': every GPU counted and EP shown."""
    budget = f" budget {token_budget}" if token_budget is not None else ""
    reps = f"{replicas} replica{'s' if replicas > 1 else ''}"
    return f"{gpus}x {gpu} ({reps} x TP{tp}{f' EP{ep}' if ep > 1 else ''} PP{pp}) {scheduler}{budget}"


def clients_note(clients: tuple[int, float] | None) -> str:
    """' (4 closed-loop clients)' for a search with closed-loop clients, else ''."""
    return f" ({clients[0]} closed-loop clients)" if clients else ""


def deployment_label(config: SimConfig) -> str:
    """:func:`label_of` an aggregated deployment."""
    return label_of(config.gpu, config.replicas * config.tp * config.pp, config.replicas, config.tp, config.ep,
                    config.pp, config.scheduler, config.token_budget)


@dataclass
class CapacityResult:
    """Outcome of one configuration's search."""

    label: str
    config: SimConfig
    capacity: float | None            # aggregated over seeds by pass_rule (None on error)
    per_seed: list[float]
    capacity_min: float | None
    capacity_max: float | None
    bounded: bool                     # False: some seed still passed at the highest rate tried
    num_simulations: int              # probe included, cached points included
    metrics: dict[str, Any]           # median over seeds of each metric at each seed's capacity point
    points: list[dict] = field(default_factory=list)  # seed, qps, passed, metrics of every point
    error: str | None = None
    saturated_rps: float | None = None
    binding: list[str] = field(default_factory=list)  # the bounds broken just above capacity ("saturation": queue)
    headroom: dict[str, float] = field(default_factory=dict)  # each bound's value / bound at capacity
    limit: str | None = None  # the knob most often full at capacity (token_budget, max_num_seqs, kv_capacity, compute)

    def describe(self) -> str:
        if self.error:
            return f"{self.label}: error: {self.error}"
        spread = f"seeds {self.capacity_min:.3g}-{self.capacity_max:.3g}" if len(self.per_seed) > 1 else "1 seed"
        more = "" if self.bounded else " (still passing at the highest rate tried: a lower bound)"
        return (f"{self.label}: capacity {self.capacity:.3g} req/s ({spread}){more}, "
                f"{self.num_simulations} simulations")

    def describe_binding(self) -> str:
        """Which bound binds just above capacity and the headroom of the others at capacity, in one line."""
        if self.error or self.capacity is None:
            return "-"
        sat = f"{self.saturated_rps:.3g} req/s" if self.saturated_rps else "its throughput"
        names = {"saturation": f"saturation (the most the deployment sustains: {sat} with every request queued, "
                               f"or a growing queue)"}
        bound = ", ".join(names.get(b, b) for b in self.binding) or "none (no rate tried above capacity failed)"
        room = ", ".join(f"{k} at {v:.0%} of its bound" for k, v in self.headroom.items() if k not in self.binding)
        return f"binding: {bound}" + (f"; at capacity {room}" if room else "")

    def describe_limit(self) -> str:
        """The knob most often full at capacity and how full the others were, in one line."""
        from sim.serving.load_verdict import describe_limits
        full = {k[5:]: v for k, v in self.metrics.items() if k.startswith("full_") and v is not None}
        return "limit: " + describe_limits({"binding": self.limit, "full_fraction": full}) if self.limit else "-"
