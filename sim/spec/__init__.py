"""Speculative decoding and multi-token prediction as vLLM V1 runs them: config, acceptance, state, cost, outputs."""

from sim.spec.config import Acceptance, SpecConfig, parse_acceptance, parse_speculative_config
from sim.spec.state import SpecDecoding

__all__ = ["Acceptance", "SpecConfig", "SpecDecoding", "parse_acceptance", "parse_speculative_config"]
