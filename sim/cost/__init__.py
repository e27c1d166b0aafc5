"""Cost models: the interface and the analytical roofline (the embedded default)."""

from sim.cost.base import CostModel, StageCost
from sim.cost.roofline import RooflineCostModel

__all__ = ["CostModel", "StageCost", "RooflineCostModel"]
