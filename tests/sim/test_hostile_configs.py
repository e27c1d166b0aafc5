"""Hostile model configs, deployment files, price files and profiles (issue 28): one bounded line, never a hang.

Each reader refuses what would hang, exhaust memory, crash or be read as something else, naming the file,
the line where there is one, the field and the limit; no message echoes a huge value whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from sim.capacity.planner import load_prices
from sim.catalog.hf_config import load_hf_config
from sim.catalog.limits import MAX_EXPERTS, MAX_LAYERS, MAX_REPLICAS
from sim.catalog.models import ModelConfigError, get_model
from sim.cli.main import main
from sim.cost.profile_format import ProfileError, read_profile
from sim.inputs import brief, read_json_object
from sim.serving.deployment import MAX_FILE_BYTES, MAX_KEYS, DeploymentError, load_deployment
from tests.paths import TINY_CPU_PROFILE

BASE = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 1024}
MIXTRAL = {**BASE, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}
#: no refusal may be longer than this, whatever the size of the input (a path, a field, a reason, a short value,
#: at most the catalogue's model names)
SHORT = 800


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) rather than hang when the body runs past ``seconds``."""
    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _config(tmp_path: Path, cfg: dict | str, name: str = "config.json") -> Path:
    p = tmp_path / name
    p.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=1))
    return p


def _refused(error: type[Exception], call: Callable[[], object], *parts: str) -> str:
    """The message of ``call()``'s refusal: one short line holding every one of ``parts``."""
    with within(10), pytest.raises(error) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < SHORT, msg
    for part in parts:
        assert part in msg, msg
    return msg


# ---- model configs (defects 1, 10, 17, 20) -----------------------------------------------------------------

@pytest.mark.parametrize("layers", [10**12, 2**64, MAX_LAYERS + 1])
def test_a_config_with_too_many_layers_is_refused_naming_the_field_line_and_limit(tmp_path, layers):
    p = _config(tmp_path, {**BASE, "num_hidden_layers": layers})
    _refused(ModelConfigError, lambda: load_hf_config(p), f"{p}:3: field 'num_hidden_layers'", "at most 1,024")


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 2**40), ("num_attention_heads", 10**6), ("intermediate_size", 10**9), ("vocab_size", 10**9),
    ("max_position_embeddings", 10**12), ("head_dim", 10**6), ("num_key_value_heads", 2**63),
])
def test_every_size_of_a_config_is_bounded(tmp_path, field, value):
    p = _config(tmp_path, {**BASE, field: value})
    _refused(ModelConfigError, lambda: load_hf_config(p), f"field '{field}'", "at most")


def test_cost_of_a_config_with_a_trillion_layers_is_one_line_not_a_hang(tmp_path, capsys):
    p = _config(tmp_path, {**BASE, "num_hidden_layers": 10**12})
    with within(20):
        assert main(["cost", "--model", str(p), "--prefill", "512"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'num_hidden_layers'" in err and "1,024" in err


def test_a_billion_experts_are_refused_before_anything_is_allocated(tmp_path):
    p = _config(tmp_path, {**MIXTRAL, "num_local_experts": 10**9})
    _refused(ModelConfigError, lambda: load_hf_config(p), "field 'num_local_experts'", f"{MAX_EXPERTS:,}")
    p = _config(tmp_path, {**MIXTRAL, "num_experts_per_tok": 9})
    _refused(ModelConfigError, lambda: load_hf_config(p), "field 'num_experts_per_tok'", "exceed")


@pytest.mark.parametrize("patch,field,why", [
    ({"quantization_config": {"quant_method": ["fp8"]}}, "quantization_config.quant_method", "must be a string"),
    ({"quantization_config": ["fp8"]}, "quantization_config", "must be an object"),
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings", "must be true or false, got 'no'"),
    ({"tie_word_embeddings": 1}, "tie_word_embeddings", "must be true or false, got 1"),
    ({"model_type": ["llama"]}, "model_type", "must be a string"),
    ({"rope_scaling": "linear"}, "rope_scaling", "must be an object"),
    ({"hidden_act": 7}, "hidden_act", "must be a string"),
])
def test_every_field_of_a_config_has_its_type_checked(tmp_path, patch, field, why):
    p = _config(tmp_path, {**BASE, **patch})
    _refused(ModelConfigError, lambda: load_hf_config(p), f"field '{field}'", why)


def test_a_json_boolean_is_still_read_as_one(tmp_path):
    assert load_hf_config(_config(tmp_path, {**BASE, "tie_word_embeddings": True})).tie_embeddings
    assert not load_hf_config(_config(tmp_path, {**BASE, "tie_word_embeddings": False})).tie_embeddings


@pytest.mark.parametrize("literal,why", [("NaN", "NaN is not a finite number"), ("Infinity", "Infinity is not"),
                                         ("1e999", "beyond the range of a float"),
                                         ("1" + "0" * 5000, "an integer of 5,001 digits")],
                         ids=["nan", "infinity", "1e999", "5001-digits"])
def test_non_finite_and_overlong_numbers_in_a_config_are_refused(tmp_path, literal, why):
    text = json.dumps(BASE, indent=1).replace('"hidden_size": 64', f'"hidden_size": {literal}')
    p = _config(tmp_path, text)
    _refused(ModelConfigError, lambda: load_hf_config(p), f"{p}:4: field 'hidden_size'", why)


def test_deeply_nested_json_is_a_clean_error_naming_the_file(tmp_path):
    for text in ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"a":' * 100_000 + "1" + "}" * 100_000):
        p = _config(tmp_path, text)
        _refused(ModelConfigError, partial(load_hf_config, p), str(p), "nested more than 64 levels")
        q = _config(tmp_path, text, "prices.json")
        _refused(ValueError, partial(load_prices, q), str(q), "nested more than 64 levels")


def test_a_repeated_key_is_refused_naming_the_key_and_its_line(tmp_path):
    p = _config(tmp_path, '{"a100-80gb": 1.0,\n "a100-80gb": 2.0}', "prices.json")
    _refused(ValueError, lambda: load_prices(p), f"{p}:2: field 'a100-80gb': key given twice")
    nested = '{"a": {"x": 1,\n "y": {"x": 2}},\n "q": {"m": 1, "m": 2}}'  # x twice in different objects is fine
    _refused(ValueError, lambda: read_json_object(_config(tmp_path, nested)), ":3: field 'q.m'")
    p = _config(tmp_path, json.dumps(BASE)[:-1] + ', "hidden_size": 128}')
    _refused(ModelConfigError, lambda: load_hf_config(p), "field 'hidden_size': key given twice")


def test_non_finite_prices_are_refused(tmp_path):
    for literal in ("NaN", "-Infinity", "1e999"):
        p = _config(tmp_path, '{"a100-80gb": ' + literal + "}", "prices.json")
        _refused(ValueError, partial(load_prices, p), "field 'a100-80gb'")


def test_huge_values_are_echoed_briefly(tmp_path):
    p = _config(tmp_path, {**BASE, "hidden_size": "9" * 5000})
    _refused(ModelConfigError, lambda: load_hf_config(p), "field 'hidden_size'", "(5,000 characters)")
    p = _config(tmp_path, {**BASE, "_name_or_path": "x" * 50_000})
    _refused(ModelConfigError, lambda: load_hf_config(p), "field '_name_or_path'")
    _refused(ValueError, lambda: get_model("y" * 100_000), "unknown model", "(100,000 characters)")
    assert brief(10**5000) == "an integer of about 5,001 digits" and len(brief("z" * 10**6)) < 90
    loop: list = []
    loop.append(loop)
    assert brief(loop) == "[[[[...]]]]"


def test_streams_as_configs_neither_block_nor_fill_memory(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    _refused(ModelConfigError, lambda: get_model(str(fifo)), "not valid JSON")
    if os.path.exists("/dev/zero"):
        _refused(ModelConfigError, lambda: get_model("/dev/zero"), "more than the 16,777,216 bytes")


# ---- deployment files (defects 2, 8, 9, 20) -----------------------------------------------------------------

def _deployment(tmp_path: Path, text: str, name: str = "d.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_deployment_with_thirty_thousand_keys_is_refused_at_once(tmp_path):
    p = _deployment(tmp_path, "model: tiny\n" + "\n".join(f"key{i}: {i}" for i in range(30_000)))
    t0 = time.perf_counter()
    _refused(DeploymentError, lambda: load_deployment(p), str(p), f"more than the {MAX_FILE_BYTES:,} bytes")
    p = _deployment(tmp_path, "model: tiny\n" + "\n".join(f"k{i}: 1" for i in range(2 * MAX_KEYS)))
    _refused(DeploymentError, lambda: load_deployment(p), f"more than {MAX_KEYS:,} keys")
    assert time.perf_counter() - t0 < 5


def test_repeated_keys_are_still_refused_in_linear_time(tmp_path):
    p = _deployment(tmp_path, "model: tiny\n" + "".join(f"k{i}: 1\n" for i in range(900)) + "k5: 2\n")
    _refused(DeploymentError, lambda: load_deployment(p), f"{p}:902: key 'k5' given twice")


@pytest.mark.parametrize("name,text", [
    ("d.yaml", "model: tiny\nx: " + "[" * 20_000 + "]" * 20_000 + "\n"),
    ("d.yaml", "model: tiny\nx:\n" + "".join("  " * i + "- \n" for i in range(1, 150))),
    ("d.yaml", "model: tiny\n" + "".join(" " * i + f"k{i}:\n" for i in range(200))),
    ("d.toml", "x = " + "[" * 20_000 + "]" * 20_000 + "\n"),
    ("d.toml", "a" + ".a" * 3000 + " = 1\n"),
], ids=["yaml-flow", "yaml-list", "yaml-block", "toml-array", "toml-dotted"])
def test_deeply_nested_deployment_files_are_a_clean_error(tmp_path, name, text):
    p = _deployment(tmp_path, text, name)
    _refused(DeploymentError, lambda: load_deployment(p), str(p), "nested")


def test_yaml_aliases_cannot_blow_up(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 8)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    _refused(DeploymentError, lambda: load_deployment(_deployment(tmp_path, bomb)), "nested")
    _refused(DeploymentError, lambda: load_deployment(_deployment(tmp_path, "model: tiny\ntp: &x [*x]\n")),
             "key 'tp': expected an integer >= 1, got [[[[...]]]]")


@pytest.mark.parametrize("key,value,limit", [
    ("replicas", "9223372036854775807", f"at most {MAX_REPLICAS:,}"), ("replicas", "1000000000", "at most 10,000"),
    ("tp", "4096", "at most 1,024"), ("pp", "100000", "at most 1,024"), ("ep", "2048", "at most 1,024"),
    ("max_batch_size", "9223372036854775807", "at most"), ("token_budget", "9223372036854775807", "at most"),
    ("block_size", "9223372036854775807", "at most 65,536"), ("kv_blocks", "9223372036854775807", "at most"),
    ("max_model_len", "9223372036854775807", "at most"), ("chunk_align", "9223372036854775807", "at most"),
])
def test_every_count_of_a_deployment_is_bounded(tmp_path, key, value, limit):
    for name, text in (("d.yaml", f"model: tiny\n{key}: {value}\n"), ("d.toml", f'model = "tiny"\n{key} = {value}\n')):
        p = _deployment(tmp_path, text, name)
        _refused(DeploymentError, partial(load_deployment, p), f"key '{key}'", limit)


def test_the_gpus_of_a_pool_are_bounded(tmp_path):
    p = _deployment(tmp_path, "model: tiny\nreplicas: 10000\ntp: 1000\n")
    _refused(DeploymentError, lambda: load_deployment(p), "key 'pool'", "100,000 GPUs")


def test_simulate_refuses_a_billion_replicas_in_one_line(tmp_path, capsys):
    p = _deployment(tmp_path, "model: tiny\nreplicas: 1000000000\n")
    with within(20):
        assert main(["simulate", "--deployment", str(p), "-n", "4", "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'replicas'" in err and "10,000" in err


def test_huge_values_in_deployment_files_are_echoed_briefly(tmp_path):
    p = _deployment(tmp_path, "model: " + "x" * 5_000_000 + "\n")
    _refused(DeploymentError, lambda: load_deployment(p), str(p), "bytes")
    p = _deployment(tmp_path, "model: " + "x" * 50_000 + "\n")
    _refused(DeploymentError, lambda: load_deployment(p), "key 'model'", "(50,000 characters)")
    for name, text in (("d.yaml", "model: tiny\ntp: " + "9" * 5000 + "\n"), ("d.toml", "tp = " + "9" * 5000 + "\n")):
        p = _deployment(tmp_path, text, name)
        _refused(DeploymentError, partial(load_deployment, p), "key 'tp': an integer of 5,000 digits")


def test_a_deployment_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "d.yaml"
    os.mkfifo(fifo)
    _refused(DeploymentError, lambda: load_deployment(fifo), "key 'model': required")


# ---- profiles (defect 11) -------------------------------------------------------------------------------

@pytest.fixture
def profile(tmp_path) -> Path:
    dest = tmp_path / "prof"
    shutil.copytree(TINY_CPU_PROFILE, dest)
    return dest


def _set_meta(profile: Path, **fields) -> None:
    meta = json.loads((profile / "profile.json").read_text())
    (profile / "profile.json").write_text(json.dumps({**meta, **fields}, indent=2))


def _set_cell(profile: Path, op: str, column: str, value: str) -> int:
    """Set ``column`` of the first row of ``op``; returns that row's line."""
    lines = (profile / "measurements.csv").read_text().splitlines()
    col = lines[0].split(",").index(column)
    i = next(i for i, line in enumerate(lines) if line.startswith(op + ","))
    cells = lines[i].split(",")
    cells[col] = value
    lines[i] = ",".join(cells)
    (profile / "measurements.csv").write_text("\n".join(lines) + "\n")
    return i + 1


@pytest.mark.parametrize("op,column,value,why", [
    ("lm_head", "seqs", "0", "seqs must be >= 1"), ("host_overhead", "seqs", "0", "seqs must be >= 1"),
    ("attn_decode", "seqs", "0", "seqs must be >= 1"), ("forward", "seqs", "0", "seqs must be >= 1"),
    ("qkv_proj", "tokens", "0", "tokens must be >= 1"), ("attn_decode", "context", "0", "context must be >= 1"),
    ("qkv_proj", "tokens", "9" * 5000, "tokens must be an integer >= 0"),
    ("qkv_proj", "tokens", "99999999999", "tokens must be at most"),
    ("qkv_proj", "tokens", "\u0661\u0662", "tokens must be an integer >= 0"),
    ("qkv_proj", "median_s", "1e999", "median_s must be a positive number"),
], ids=["lm_head-seqs0", "host-seqs0", "decode-seqs0", "forward-seqs0", "tokens0", "decode-context0",
        "tokens-5000-digits", "tokens-huge", "tokens-arabic-digits", "median-1e999"])
def test_a_bad_profile_row_is_refused_naming_line_and_field(profile, op, column, value, why):
    line = _set_cell(profile, op, column, value)
    _refused(ProfileError, lambda: read_profile(profile), f"measurements.csv:{line}: {why}")


def test_a_profile_row_with_no_sequences_no_longer_divides_by_zero(profile, capsys):
    _set_cell(profile, "lm_head", "seqs", "0")
    assert main(["simulate", "--model", "tiny", "--profile", str(profile), "-n", "4", "-q",
                 "--out", str(profile.parent / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seqs must be >= 1" in err


@pytest.mark.parametrize("fields,why", [
    ({"block_size": 0}, "field 'block_size': must be a positive integer"),
    ({"block_size": -16}, "field 'block_size': must be a positive integer"),
    ({"block_size": 1e300}, "field 'block_size': must be an integer"),
    ({"block_size": None}, "field 'block_size': must be an integer"),
    ({"block_size": 2**40}, "field 'block_size': must be at most 65,536"),
    ({"format_version": 999}, "field 'format_version': unknown field"),
    ({"version": True}, "field 'version': must be an integer"),
    ({"dtype_bytes": True}, "field 'dtype_bytes': must be an integer"),
    ({"host_prefill": {"per_token_s": [1]}}, "field 'host_prefill.per_token_s': must be a finite number"),
    ({"communication": {"measured_tp": "1"}}, "field 'communication.measured_tp': must be a list"),
])
def test_bad_profile_metadata_is_refused_naming_line_and_field(profile, fields, why):
    _set_meta(profile, **fields)
    _refused(ProfileError, lambda: read_profile(profile), "profile.json:", why)


def test_a_profiled_model_shape_is_bounded(profile):
    meta = json.loads((profile / "profile.json").read_text())
    _set_meta(profile, model={**meta["model"], "num_layers": 10**12})
    _refused(ProfileError, lambda: read_profile(profile), "field 'model.num_layers': must be at most 1,024")


def test_a_repeated_csv_column_is_refused(profile):
    text = (profile / "measurements.csv").read_text().replace("op,tp,tokens", "op,tp,tokens,tokens", 1)
    (profile / "measurements.csv").write_text(text)
    _refused(ProfileError, lambda: read_profile(profile), "measurements.csv:1: column 'tokens' given twice")


def test_the_shipped_profile_still_reads(profile):
    assert len(read_profile(profile).table) > 500
