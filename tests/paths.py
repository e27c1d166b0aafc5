"""Where tests find the repository's files and the shared data beside it (``../shared``), and skips without them."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_TRACE = ROOT / "traces" / "example_sharegpt_poisson.jsonl"
TINY_CPU_PROFILE = ROOT / "calibration" / "profiles" / "tiny-cpu"
SHARED = ROOT.parent / "shared"
SHARED_TRACES = SHARED / "traces"
AZURE = SHARED_TRACES / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE = SHARED_TRACES / "mooncake" / "synthetic_trace.jsonl"
SHAREGPT = SHARED_TRACES / "sarathi" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
ARXIV = SHARED_TRACES / "vidur" / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"


def needs(path: Path) -> pytest.MarkDecorator:
    """Skip unless ``path`` (shared data, never copied into the repository) is present."""
    return pytest.mark.skipif(not path.is_file(), reason=f"{path} not present (../shared is not beside the clone)")
