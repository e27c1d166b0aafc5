"""--speculative-config (vLLM's keys) and --spec-acceptance: parsing, defaults with sources, refusals."""

from __future__ import annotations

import pytest

from sim.spec.config import DEFAULT_ACCEPTANCE, parse_acceptance, parse_speculative_config


def test_vllm_keys_and_the_methods_defaults():
    s = parse_speculative_config('{"method": "eagle3", "num_speculative_tokens": 3, "model": "x/y"}')
    assert (s.method, s.num_speculative_tokens, s.model, s.lookahead) == ("eagle3", 3, "x/y", 3)
    assert s.acceptance.rates == (0.65,) and s.acceptance.geometric and "MT-bench" in s.acceptance.source
    assert parse_speculative_config('{"method": "mtp", "num_speculative_tokens": 1}').acceptance.rates == (0.875,)
    ng = parse_speculative_config('{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 5}', "0.5")
    assert ng.lookahead == 0  # n-gram writes no draft KV: vLLM allocates no lookahead slots
    assert set(DEFAULT_ACCEPTANCE) == {"eagle3", "mtp"}


def test_geometric_and_per_position_acceptance():
    g = parse_acceptance("0.5")
    assert [g.rate(i) for i in (1, 2, 3)] == [0.5, 0.25, 0.125]
    assert g.conditional(3) == [0.5, 0.5, 0.5]
    assert g.expected_length(3) == 1.875
    p = parse_acceptance("0.8, 0.6, 0.3")  # vLLM's logged per-position rates: unconditional
    assert p.conditional(3) == pytest.approx([0.8, 0.75, 0.5])
    assert p.expected_length(3) == pytest.approx(2.7)
    assert p.rate(4) == 0.0


@pytest.mark.parametrize("text, words", [
    ("nope", "not JSON"), ("[1]", "JSON object"),
    ('{"method": "medusa", "num_speculative_tokens": 2}', "method must be"),
    ('{"method": "mtp", "num_speculative_tokens": 0}', "num_speculative_tokens"),
    ('{"method": "mtp", "num_speculative_tokens": 2.5}', "num_speculative_tokens"),
    ('{"method": "mtp", "num_speculative_tokens": 1, "k": 2}', "unknown key"),
    ('{"method": "draft_model", "num_speculative_tokens": 2}', "needs \"model\""),
    ('{"method": "ngram", "num_speculative_tokens": 2}', "give --spec-acceptance"),
    ('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 0}', "prompt_lookup_min"),
])
def test_bad_configs_are_refused_with_the_reason(text, words):
    with pytest.raises(ValueError, match=words):
        parse_speculative_config(text, None if "ngram" in text and "lookup" not in text else "0.5")


@pytest.mark.parametrize("text", ["", "1.5", "-0.1", "nan", "0.5,0.7", "a", "0.5,,0.2"])
def test_bad_acceptance_is_refused(text):
    with pytest.raises(ValueError, match="--spec-acceptance"):
        parse_acceptance(text)


def test_too_few_per_position_rates_for_k_are_refused():
    with pytest.raises(ValueError, match="one per position"):
        parse_speculative_config('{"method": "eagle", "num_speculative_tokens": 3}', "0.8,0.6")
