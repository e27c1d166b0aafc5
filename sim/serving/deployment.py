"""Deployment files: a whole deployment, aggregated or disaggregated (prefill and decode pools), in YAML or TOML.

``servesim simulate --deployment FILE`` reads one in place of the deployment flags; ``load_deployment``
returns the ``SimConfig`` (aggregated) or ``DisaggConfig`` (disaggregated) it describes, and
``describe`` writes a deployment back, every value resolved, for summary.json. The schema::

    model: llama-2-13b        # required: a catalogue name, or a path to a Hugging Face config.json
                              #   (relative paths are taken from the file's folder)
    max_model_len: 4096       # optional: the context length (vLLM's --max-model-len)
    mode: disaggregated       # aggregated (the default) or disaggregated

    # pool keys: at the top level they apply to every pool; a pool's own section overrides them
    gpu: a100-80gb            # the GPU from the catalogue (`servesim gpus`)
    tp: 1                     # tensor-parallel degree      pp: pipeline stages      replicas: replicas
    ep: 1                     # expert-parallel degree (1, or tp)
    dtype: auto               # weights: auto, bf16, fp16, fp8     kv_cache_dtype: auto or fp8
    router_skew: 0            # MoE routing skew
    scheduler: vllm           # faster_transformer, orca, vllm, sarathi, vllm_v1
    token_budget: 4096        # tokens per iteration; also vLLM's name max_num_batched_tokens
    max_batch_size: 256       # requests running at once; also vLLM's name max_num_seqs
    chunk_align: 0            # block_size: 16    watermark: 0.01    gpu_memory_utilization: 0.9
    kv_reservation: max-model-len  # Orca/FT per request: max-model-len (as the originals) or oracle (a what-if)
    kv_blocks: 2000           # override the computed KV capacity (blocks per replica)
    enable_prefix_caching: false
    router: round_robin       # aggregated only: round_robin, least_outstanding, cache_aware
    router_cache_weight: 1024 # aggregated only: cache_aware's prefill tokens per outstanding request

    pool: {...}               # aggregated: the pool's section (optional: the top-level keys suffice)
    prefill: {...}            # disaggregated, required: the prefill pool's keys
    decode: {...}             # disaggregated, required: the decode pool's keys
    link:                     # disaggregated, optional: the path the KV cache takes to the decode pool
      kind: network           #   network (the GPUs' NICs, across nodes; the default) or nvlink (one node)
      bandwidth_GBps: 25      #   GB/s (1e9 bytes/s) per GPU; default: the prefill GPU's NIC or NVLink rate
      latency_us: 10          #   microseconds per transfer; default 10
      overlap: false          #   transfer layer by layer during the prefill
    routers:                  # disaggregated, optional
      prefill: round_robin    #   arrivals to prefill replicas: round_robin, least_outstanding, cache_aware
      decode: least_kv        #   prefilled requests to decode replicas: least_kv or least_running
      cache_weight: 1024      #   cache_aware's prefill tokens per outstanding request

In TOML the sections are tables (``[prefill]``, ``[link]``), after the top-level keys. Every value is checked
as it is read: an error is one line naming the file and the key's path (``d.yaml: key 'prefill.tp':
expected an integer >= 1, got 'two'``), an unknown key is refused with the known ones, and a file that does
not parse names its line. The run's seed and ``--strict`` stay command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sim.catalog.hardware import get_gpu
from sim.catalog.limits import (
    MAX_BATCH_SIZE,
    MAX_BLOCK_SIZE,
    MAX_CONTEXT,
    MAX_KV_BLOCKS,
    MAX_PARALLEL,
    MAX_POOL_GPUS,
    MAX_REPLICAS,
)
from sim.catalog.models import DTYPE_BYTES, get_model
from sim.inputs import (
    YAML_TOML_SKIP,
    brief,
    brief_name,
    brief_text,
    long_integer,
    read_input_text,
    structure_problem,
    too_deep,
)
from sim.kv.memory import InfeasibleConfigError
from sim.schedulers import scheduler_class
from sim.schedulers.base import KV_RESERVATIONS
from sim.schedulers.vllm_v1 import USAGE_CONTEXTS
from sim.serving.cluster import Router
from sim.serving.disagg import DECODE_ROUTERS, LINK_KINDS, DisaggConfig, LinkConfig
from sim.serving.frontend import parse_frontend
from sim.serving.simulator import SimConfig
from sim.spec.config import parse_acceptance, parse_speculative_config

Check = Callable[[Any], Any]
MODES = ("aggregated", "disaggregated")
POOLS = {"aggregated": ("pool",), "disaggregated": ("prefill", "decode")}
ALIASES = {"max_num_seqs": "max_batch_size", "max_num_batched_tokens": "token_budget"}  # vLLM's names
ROUTING = ("router", "router_cache_weight")  # a pool key when aggregated; the routers section when not
HINTS = {"prefill": "a pool section of mode: disaggregated", "decode": "a pool section of mode: disaggregated",
         "link": "a section of mode: disaggregated", "routers": "a section of mode: disaggregated",
         "pool": "a section of mode: aggregated (disaggregated pools are 'prefill' and 'decode')",
         "router": "disaggregated routers are set under 'routers' (prefill, decode, cache_weight)",
         "router_cache_weight": "disaggregated routers are set under 'routers' (prefill, decode, cache_weight)"}

#: the largest deployment file read: one is a few dozen lines (this module's example, comments included, is
#: under 3 KB); a bigger file is no deployment and would take seconds to parse
MAX_FILE_BYTES = 64 << 10
#: the most keys in one file, over all its sections (the schema has under 100)
MAX_KEYS = 1000
#: the deepest nesting of mappings and lists (the schema nests 2: a section's keys)
MAX_NESTING = 8


class DeploymentError(ValueError):
    """A deployment file that cannot be read or describes no deployment (one line naming the file and key)."""


class _Invalid(Exception):
    """A value of the wrong kind; its message says what was expected."""


# ---- value checks -------------------------------------------------------------------------------

def _got(value: Any) -> str:
    """' got X', with a hint where YAML read a number as text (PyYAML wants 1.0e+9, not 1e9 or 1.0e9)."""
    hint = ""
    if isinstance(value, str) and "e" in value.lower():
        try:
            float(value)
            hint = " (YAML reads 1e9 as text: write 1.0e+9)"
        except ValueError:
            pass
    return f"got {brief(value)}{hint}"


def _integer(least: int, most: int, what: str) -> Check:
    """Integers from ``least`` to ``most`` (not booleans); ``what`` says what the bound is."""
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise _Invalid(f"expected an integer >= {least}, {_got(v)}")
        if v > most:
            raise _Invalid(f"expected at most {most:,} ({what}), {_got(v)}")
        return v
    return check


def _number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Check:
    """Finite numbers in the interval from ``low`` to ``high`` (either end open or closed)."""
    if high < math.inf:
        what = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    else:
        what = f"{'>' if low_open else '>='} {low:g}"

    def check(v: Any) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
            raise _Invalid(f"expected a number {what}, {_got(v)}")
        return v
    return check


def _choice(names: Iterable[str]) -> Check:
    """One of ``names``."""
    names = tuple(names)

    def check(v: Any) -> str:
        if v not in names:
            raise _Invalid(f"expected one of {', '.join(names)}, {_got(v)}")
        return v
    return check


def _flag(v: Any) -> bool:
    """True or false (YAML's and TOML's booleans)."""
    if not isinstance(v, bool):
        raise _Invalid(f"expected true or false, {_got(v)}")
    return v


def _looked_up(lookup: Callable[[str], Any], what: str = "a name") -> Check:
    """A name (or other string: ``what``) that ``lookup`` knows (its own message otherwise)."""
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise _Invalid(f"expected {what}, {_got(v)}")
        try:
            lookup(v)
        except ValueError as e:
            raise _Invalid(str(e)) from None
        return v
    return check


def _nullable(check: Check) -> Check:
    """``check``, or null (YAML's ~ or null: the default)."""
    return lambda v: None if v is None else check(v)


# every count is bounded (sim.catalog.limits), so that no file can make the simulator allocate without end
PARALLEL = _integer(1, MAX_PARALLEL, "servesim's bound on a parallel degree")
TOKENS = _integer(1, MAX_CONTEXT, "servesim's bound on a token count")
POOL_KEYS: dict[str, Check] = {
    "gpu": _looked_up(get_gpu), "tp": PARALLEL, "pp": PARALLEL, "ep": PARALLEL,
    "replicas": _integer(1, MAX_REPLICAS, "servesim's bound on replicas per pool"),
    "dtype": _choice(("auto", *DTYPE_BYTES)), "kv_cache_dtype": _choice(("auto", "fp8")),
    "router_skew": _number(0, 100), "scheduler": _looked_up(scheduler_class), "token_budget": _nullable(TOKENS),
    "max_batch_size": _nullable(_integer(1, MAX_BATCH_SIZE, "servesim's bound on running requests")),
    "usage_context": _choice(USAGE_CONTEXTS), "kv_reservation": _choice(KV_RESERVATIONS),
    "chunk_align": _integer(0, MAX_CONTEXT, "servesim's bound on a token count"),
    "block_size": _integer(1, MAX_BLOCK_SIZE, "servesim's bound on tokens per block"),
    "watermark": _number(0, 1, high_open=True), "gpu_memory_utilization": _number(0, 1, low_open=True),
    "kv_blocks": _nullable(_integer(1, MAX_KV_BLOCKS, "servesim's bound on blocks per replica")),
    "enable_prefix_caching": _nullable(_flag), "async_scheduling": _nullable(_flag),
    "virtual_engines": _nullable(_flag),
    "frontend": _nullable(_looked_up(parse_frontend)),
    "router": _choice(Router.POLICIES), "router_cache_weight": _number(0, 1e12),
    # speculative decoding (sim.spec): vLLM's JSON as a string; its keys checked here, its acceptance at run time
    "speculative_config": _nullable(_looked_up(lambda v: parse_speculative_config(v, "1"), "a quoted JSON string")),
    "spec_acceptance": _nullable(_looked_up(parse_acceptance, "a quoted string of rates, e.g. '0.6' or '0.7,0.5'")),
}
LINK_KEYS: dict[str, Check] = {"kind": _choice(LINK_KINDS), "bandwidth_GBps": _nullable(_number(0, low_open=True)),
                               "latency_us": _nullable(_number(0, 1e12)), "overlap": _flag}
ROUTER_KEYS: dict[str, Check] = {"prefill": _choice(Router.POLICIES), "decode": _choice(DECODE_ROUTERS),
                                 "cache_weight": _number(0, 1e12)}
SERVING_KEYS: dict[str, Check] = {"model": lambda v: v, "max_model_len": _nullable(TOKENS), "mode": _choice(MODES)}


def pool_keys(mode: str) -> dict[str, Check]:
    """The keys of one pool of ``mode``: every deployment field of SimConfig (routing only when aggregated)."""
    return {k: c for k, c in POOL_KEYS.items() if mode == "aggregated" or k not in ROUTING}


# ---- reading ------------------------------------------------------------------------------------

def load_deployment(path: str | Path) -> SimConfig | DisaggConfig:
    """The deployment a YAML (.yaml, .yml) or TOML (.toml) file describes (schema: this module's docstring)."""
    p = Path(path)
    return from_mapping(read_file(p), brief_name(path), p.parent)


def read_file(path: Path) -> Any:
    """The parsed file; DeploymentError with file:line where it does not parse, or past the bounds on its size
    (MAX_FILE_BYTES), keys (MAX_KEYS) and nesting (MAX_NESTING)."""
    suffix = path.suffix.lower()
    where = brief_name(path)
    if suffix not in (".yaml", ".yml", ".toml"):
        raise DeploymentError(f"{where}: a deployment file is YAML (.yaml, .yml) or TOML (.toml)")
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long to look up: the reader says so
        exists = True
    if not exists:
        raise FileNotFoundError(f"{where}: no such deployment file")
    text = read_input_text(path, DeploymentError, "deployment file", MAX_FILE_BYTES)
    deep = too_deep(text, MAX_NESTING, YAML_TOML_SKIP)  # before the recursive parsers
    if deep is not None:
        raise DeploymentError(f"{where}:{deep}: nested more than {MAX_NESTING} levels deep (a deployment file "
                              "nests 2)")
    try:
        data = _read_toml(text, where) if suffix == ".toml" else _read_yaml(text, where)
    except RecursionError:
        raise DeploymentError(f"{where}: nested too deeply to read (a deployment file nests 2 levels)") from None
    except DeploymentError:
        raise
    except ValueError as e:  # a value the parser cannot convert (an integer of 5,000 digits)
        raise DeploymentError(f"{where}:{long_integer(text) or f' {brief_text(e)}'}") from None
    shape = structure_problem(data, MAX_KEYS, MAX_NESTING)
    if shape:
        raise DeploymentError(f"{where}: {shape} (a deployment file has a few dozen keys, nested 2 levels)")
    return data


def _read_toml(text: str, where: str) -> Any:
    """``text`` parsed as TOML; a syntax error as file:line."""
    import tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"^(.*) \(at line (\d+), column \d+\)$", str(e))
        raise DeploymentError(f"{where}:{m[2]}: {brief_text(m[1])}" if m else f"{where}: {brief_text(e)}") from None


def _read_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML (safe types only); a syntax error or a repeated key as file:line."""
    import yaml

    class Loader(yaml.SafeLoader):
        """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    twice = key in seen
                except TypeError:  # an unhashable key: PyYAML's own error names it
                    continue
                if twice:
                    raise DeploymentError(f"{where}:{key_node.start_mark.line + 1}: key {brief(key)} given twice")
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader: safe_load with duplicate keys refused
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        raise DeploymentError(f"{at}: {brief_text(getattr(e, 'problem', None) or e, 200)}") from None


def _key(path: str, key: Any) -> str:
    """The dotted path of ``key`` in the section at ``path``."""
    return f"{path}.{key}" if path else str(key)


def _fail(where: str, path: str, message: str) -> DeploymentError:
    """The one-line error of the key at ``path`` (or of the whole file where ``path`` is empty)."""
    return DeploymentError(f"{where}: key '{path}': {message}" if path else f"{where}: {message}")


def _section(data: Any, where: str, path: str, checks: dict[str, Check]) -> dict[str, Any]:
    """The checked values of the mapping at ``path`` (aliases resolved); unknown keys refused."""
    if not isinstance(data, dict):
        raise _fail(where, path, f"expected a mapping of keys, {_got(data)}")
    out: dict[str, Any] = {}
    named: dict[str, Any] = {}  # canonical name -> the key that gave it
    for key, value in data.items():
        name = ALIASES[key] if ALIASES.get(key) in checks else key
        if name not in checks:
            known = ", ".join([*checks, *(a for a, k in ALIASES.items() if k in checks)])
            hint = f" ({HINTS[key]})" if key in HINTS else ""
            raise _fail(where, _key(path, key), f"unknown key{hint}; known keys: {known}")
        if name in named:
            raise _fail(where, _key(path, key), f"'{named[name]}' and '{key}' set the same thing: give one")
        named[name] = key
        try:
            out[name] = checks[name](value)
        except _Invalid as e:
            raise _fail(where, _key(path, key), str(e)) from None
    return out


def _model(value: Any, where: str, base: Path | None) -> str:
    """The model: a catalogue name, or a config.json path (from ``base``, the file's folder, where it exists there)."""
    if not isinstance(value, str):
        raise _fail(where, "model", f"expected a model name or a path to a config.json, {_got(value)}")
    beside = base / value if base is not None else None
    try:
        ref = str(beside) if beside is not None and beside.exists() else value
    except (OSError, ValueError):  # a name the system cannot look up (too long, a NUL byte): not a file
        ref = value
    try:
        get_model(ref)
    except ValueError as e:
        raise _fail(where, "model", str(e)) from None
    return ref


def _as_given(value: Any) -> Any:
    """Any value (a section, checked on its own)."""
    return value


def _mode(data: Any, where: str) -> str:
    """The file's mode, checked (aggregated when not given)."""
    given = data.get("mode", "aggregated") if isinstance(data, dict) else "aggregated"
    return _section({"mode": given}, where, "", SERVING_KEYS)["mode"]


def top_keys(mode: str) -> dict[str, Check]:
    """The top-level keys of ``mode``: model, max_model_len, mode, its sections and the pool keys."""
    sections = POOLS[mode] + (("link", "routers") if mode == "disaggregated" else ())
    return {**SERVING_KEYS, **dict.fromkeys(sections, _as_given), **pool_keys(mode)}


def from_mapping(data: Any, where: str = "<deployment>", base: Path | None = None) -> SimConfig | DisaggConfig:
    """The deployment a parsed file describes; ``where`` names it in errors, ``base`` anchors a relative model path."""
    mode = _mode(data, where)
    top = _section(data if data is not None else {}, where, "", top_keys(mode))
    if "model" not in top:
        raise _fail(where, "model", "required: the model served (a catalogue name or a path to a config.json)")
    if mode == "disaggregated" and (missing := [s for s in POOLS[mode] if s not in top]):
        raise _fail(where, "", f"mode disaggregated needs a '{missing[0]}' section (the {missing[0]} pool's keys)")
    common = {"model": _model(top["model"], where, base), "max_model_len": top.get("max_model_len"),
              **{k: v for k, v in top.items() if k in POOL_KEYS}}
    pools = [_section(top.get(s, {}), where, s, pool_keys(mode)) for s in POOLS[mode]]
    for section, pool in zip(POOLS[mode], pools):
        n = {k: pool.get(k, common.get(k, 1)) for k in ("replicas", "tp", "pp")}
        if n["replicas"] * n["tp"] * n["pp"] > MAX_POOL_GPUS:
            raise _fail(where, section, f"{n['replicas']:,} replicas x tp {n['tp']} x pp {n['pp']} is more than the "
                                        f"{MAX_POOL_GPUS:,} GPUs servesim simulates in one pool")
    link = _section(top.get("link", {}), where, "link", LINK_KEYS)
    routers = _section(top.get("routers", {}), where, "routers", ROUTER_KEYS)
    try:
        return SimConfig(**common, **pools[0]) if mode == "aggregated" else disaggregated(common, *pools, link, routers)
    except ValueError as e:
        raise DeploymentError(f"{where}: {brief_text(e, 200)}") from None


# ---- building and describing --------------------------------------------------------------------

def make_link(link: dict[str, Any]) -> LinkConfig:
    """The LinkConfig of a ``link`` section (GB/s per GPU, microseconds), as the file or the flags give it."""
    gbps, us = link.get("bandwidth_GBps"), link.get("latency_us")
    return LinkConfig(kind=link.get("kind", "network"), bandwidth=None if gbps is None else gbps * 1e9,
                      latency_s=None if us is None else us / 1e6, overlap=link.get("overlap", False))


def disaggregated(common: dict[str, Any], prefill: dict[str, Any], decode: dict[str, Any], link: dict[str, Any],
                  routers: dict[str, Any]) -> DisaggConfig:
    """The DisaggConfig of SimConfig fields shared by both pools, each pool's own, a link and a routers section."""
    if common.get("speculative_config"):
        raise ValueError("--speculative-config with disaggregated pools is not modelled: drop one of them")
    shared = {k: v for k, v in common.items() if k not in ROUTING}
    routing = {field: routers[k] for k, field in (("prefill", "router"), ("cache_weight", "router_cache_weight"))
               if k in routers}
    return DisaggConfig(SimConfig(**{**shared, **prefill, **routing}), SimConfig(**{**shared, **decode}),
                        make_link(link), routers.get("decode", "least_kv"))


def with_run_options(config: SimConfig | DisaggConfig, **options: Any) -> SimConfig | DisaggConfig:
    """``config`` with run settings that are no deployment key (seed, strict) set on every pool."""
    if isinstance(config, SimConfig):
        return dataclasses.replace(config, **options)
    own = {f.name for f in dataclasses.fields(config)}  # the deployment's own, e.g. its seed
    return dataclasses.replace(config, prefill=dataclasses.replace(config.prefill, **options),
                               decode=dataclasses.replace(config.decode, **options),
                               **{k: v for k, v in options.items() if k in own})


def _resolved_pool(config: SimConfig, mode: str) -> dict[str, Any]:
    """A pool's keys as the simulation uses them: the policy's budget and caching, weight dtype, KV blocks."""
    model = config.model_spec()
    try:
        blocks = config.kv_blocks or config.plan_memory(model).num_blocks
    except InfeasibleConfigError:
        blocks = None
    resolved = {"dtype": config.weight_dtype(model), "token_budget": config.effective_token_budget(model),
                "enable_prefix_caching": config.prefix_caching, "kv_blocks": blocks,
                "max_batch_size": config.effective_max_batch_size(model),
                "async_scheduling": mode == "aggregated" and config.engine_loop == "async",
                "frontend": config.effective_frontend().name if mode == "aggregated" else "none"}
    return {k: resolved.get(k, getattr(config, k)) for k in pool_keys(mode)}


def describe(config: SimConfig | DisaggConfig) -> dict[str, Any]:
    """The resolved deployment, as a deployment file writes it (every pool's values; reading it back runs the same)."""
    if isinstance(config, SimConfig):
        return {"model": config.model, "max_model_len": config.model_spec().max_context, "mode": "aggregated",
                "pool": _resolved_pool(config, "aggregated")}
    p = config.prefill
    rate, latency = config.link.rate_and_latency(p.gpu)
    return {"model": p.model, "max_model_len": p.model_spec().max_context, "mode": "disaggregated",
            "prefill": _resolved_pool(p, "disaggregated"), "decode": _resolved_pool(config.decode, "disaggregated"),
            "link": {"kind": config.link.kind, "bandwidth_GBps": rate / 1e9, "latency_us": round(latency * 1e6, 9),
                     "overlap": config.link.overlap},
            "routers": {"prefill": p.router, "decode": config.decode_router, "cache_weight": p.router_cache_weight}}
