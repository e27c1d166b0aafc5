"""The profile format and its reader: a folder with ``profile.json`` (provenance; optional ``wake`` table of
``sim.cost.wake``) and ``measurements.csv`` (one row per timing).

``measurements.csv`` columns (diff-friendly, one measured shape per line):

==========  =================================================================================
op          a name from ``sim.ops``
tp          tensor-parallel degree of the shard shapes; 0 for ops whose shapes do not depend on TP
tokens      new tokens the op processed (attn_prefill: the chunk; attn_decode: the batch size)
seqs        sequences: rows of lm_head / sampling / final_norm, batch items of host_overhead and
            attention (0 where it does not apply)
context     attn_prefill: cached tokens before the chunk; attn_decode: keys per request (its own
            new one included; the mean for ``mixed`` rows); else 0
variant     empty, or ``mixed`` for decode batches whose requests have different contexts;
            for the whole-unit rows ``layer_forward`` and ``forward`` (``sim.ops.UNIT_TIMINGS``, tp 0)
            the batch kind ``prefill``, ``decode`` or ``mixed`` (shapes: ``sim.cost.unit_rows``)
median_s    median seconds of one call; ``p10_s``, ``p90_s`` the spread; ``repeats`` timed calls
==========  =================================================================================

Readers refuse malformed input with the file, line and field in the message. The format belongs to its
reader, the profiled cost model; ``calibration.profile_writer`` writes it.

A mixture-of-experts model's profile holds its MoE ops (``moe_router``, ``moe_experts``, ``moe_shared``
when it has shared experts) and the dense MLP's ops only if some layer is dense (``model_ops``); its
``model`` block adds the ``moe`` shape. A dense model's profile is as before.

Versions: 2 adds the whole-unit rows and measures ``host_overhead`` as the engine's whole host
part (scheduling, input preparation, output processing, ``on_batch_done``); version 1 profiles
(host overhead = scheduling and input preparation only, no unit rows) are still read, and the
cost model prices them with the op sum alone.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.catalog.limits import (
    MAX_BATCH_SIZE,
    MAX_BLOCK_SIZE,
    MAX_CONTEXT,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_PARALLEL,
    MAX_VOCAB,
    size_problem,
)
from sim.catalog.models import ModelSpec
from sim.catalog.variants import MoESpec
from sim.cost.unit_rows import ITERATION_VARIANTS
from sim.inputs import InputTooLargeError, brief, brief_name, brief_text, read_input_bytes, read_json_object
from sim.ops import ALL_OPS, COMMUNICATION_OPS, DENSE_MLP_OPS, GRAPH_TIMINGS, MOE_OPS, UNIT_TIMINGS

FORMAT = "servesim-profile"
VERSION = 2
READABLE_VERSIONS: tuple[int, ...] = (1, 2)
PROFILE_JSON = "profile.json"
MEASUREMENTS_CSV = "measurements.csv"
REPORT_MD = "report.md"
COLUMNS: tuple[str, ...] = ("op", "tp", "tokens", "seqs", "context", "variant", "median_s", "p10_s", "p90_s",
                            "repeats")
KEY_COLUMNS: tuple[str, ...] = ("op", "tp", "tokens", "seqs", "context", "variant")
INT_COLUMNS: tuple[str, ...] = ("tp", "tokens", "seqs", "context", "repeats")
#: the bound of each integer column (``sim.catalog.limits``)
INT_LIMITS: dict[str, int] = {"tp": MAX_PARALLEL, "tokens": MAX_CONTEXT, "seqs": MAX_BATCH_SIZE,
                              "context": MAX_CONTEXT, "repeats": 2**31 - 1}
#: the largest measurements.csv read (a full profile's is about 100 KB)
MAX_CSV_BYTES = 64 << 20
FLOAT_COLUMNS: tuple[str, ...] = ("median_s", "p10_s", "p90_s")
#: the ModelSpec fields that decide every op's shapes; a profile only serves a model that agrees on all
SHAPE_FIELDS: tuple[str, ...] = ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                                 "vocab_size", "gated_mlp")
# ---- op roles in the table ------------------------------------------------------------------------
#: ops whose table is indexed by sequences (rows that sample, or scheduled items), not tokens
SEQ_AXIS_OPS: tuple[str, ...] = ("final_norm", "lm_head", "sampling", "host_overhead")
#: ops whose shapes do not depend on tensor parallelism (hidden size is not sharded; every rank routes all
#: tokens over all experts); stored with tp = 0
TP_INDEPENDENT_OPS: tuple[str, ...] = ("input_norm", "post_attn_norm", "residual_add", "residual_add_mlp",
                                       "final_norm", "sampling", "host_overhead", "pp_send_recv",
                                       "moe_router") + UNIT_TIMINGS + GRAPH_TIMINGS
#: communication the single-process engine never does (no expert parallelism): always from the roofline
EP_OPS: tuple[str, ...] = ("ep_dispatch", "ep_combine")
#: ops whose rows count sequences in ``seqs`` (at least one): per-sequence ops, attention, whole-unit timings
SEQ_ROW_OPS: tuple[str, ...] = SEQ_AXIS_OPS + ("attn_prefill", "attn_decode") + UNIT_TIMINGS + GRAPH_TIMINGS
MIXED = "mixed"  # variant of attn_decode rows whose sequences have different contexts
#: engine attention backends whose cost follows the longest sequence of a batch (meta ``attention_backend``)
PADDED_BACKENDS: tuple[str, ...] = ("sdpa",)
REQUIRED_META: tuple[str, ...] = ("format", "version", "status", "device", "dtype", "dtype_bytes", "model", "tp",
                                  "grid", "communication")
_S, _I, _N, _D, _L, _B = (str,), (int,), (int, float), (dict,), (list,), (bool,)
_TYPE_NAMES = {_S: "a string", _I: "an integer", _N: "a finite number", _D: "an object", _L: "a list",
               _B: "true or false"}
#: every key profile.json may hold (the calibrator's and Vidur's importer's) and its JSON type; null stands for an
#: optional key left out. Any other key is refused: a misspelt one (``format_version``) is never ignored silently
META_TYPES: dict[str, tuple[type, ...]] = {
    "format": _S, "version": _I, "status": _S, "device": _D, "dtype": _S, "dtype_bytes": _I, "model": _D, "tp": _L,
    "grid": _D, "communication": _D, "attention_backend": _S, "block_size": _I, "command": _S, "date": _S,
    "decode_path": _S, "device_rates": _D, "git_commit": _S, "host_overhead": _D, "host_prefill": _D, "python": _S,
    "servesim": _S, "skipped": _L, "timing": _D, "torch": _S, "wake": _D, "wall_time_s": _N, "source": _D,
    "op_sources": _D,
}
#: the keys that may be null (the calibrator writes null where it has no value)
NULLABLE_META: tuple[str, ...] = ("command", "git_commit", "host_prefill", "wake", "device_rates")


def _bounded(limit: int) -> Callable[[Any], str | None]:
    """A check of an integer from 1 to ``limit``."""
    return lambda v: size_problem(v, limit)


def _at_least(least: float) -> Callable[[Any], str | None]:
    """A check of a number >= ``least``."""
    return lambda v: None if v >= least else f"must be >= {least:g}, got {brief(v)}"


def _anything(v: Any) -> str | None:
    """Any value of the right type."""
    return None


def _tp_list(v: Any) -> str | None:
    """Why ``v`` is not a list of TP degrees, or None."""
    if all(size_problem(t, MAX_PARALLEL) is None for t in v):
        return None
    return f"must list integers from 1 to {MAX_PARALLEL:,}, got {brief(v)}"
#: the keys read from profile.json's objects: (JSON type, check giving why a value is refused, or None)
NESTED_META: dict[str, dict[str, tuple[tuple[type, ...], Callable[[Any], str | None]]]] = {
    "device": {"name": (_S, _anything), "gpu": (_S, _anything), "type": (_S, _anything),
               "memory_bytes": (_N, _at_least(0))},
    "device_rates": {"flops": (_N, _at_least(0)), "mem_bandwidth": (_N, _at_least(0)), "launch_s": (_N, _at_least(0))},
    "host_prefill": {k: (_N, _at_least(0)) for k in ("per_token_s", "fixed_s", "per_request_s")},
    "communication": {"measured_tp": (_L, _tp_list), "pp": (_S, _anything)},
    "model": {"name": (_S, _anything), "num_layers": (_I, _bounded(MAX_LAYERS)),
              "max_context": (_I, _bounded(MAX_CONTEXT)),
              "hidden_size": (_I, _bounded(MAX_HIDDEN)), "num_heads": (_I, _bounded(MAX_HEADS)),
              "num_kv_heads": (_I, _bounded(MAX_HEADS)), "head_dim": (_I, _bounded(MAX_HEAD_DIM)),
              "intermediate_size": (_I, _bounded(MAX_INTERMEDIATE)), "vocab_size": (_I, _bounded(MAX_VOCAB)),
              "gated_mlp": (_B, _anything), "moe": (_D, _anything)},
}


class ProfileError(ValueError):
    """A profile that is missing, malformed or does not fit the requested model/TP."""


def moe_shape(model: ModelSpec) -> dict[str, int] | None:
    """The ``moe`` entry of profile.json's model block (None for a dense model, which has no entry)."""
    return dataclasses.asdict(model.moe) if model.moe is not None else None


def model_shape(model: ModelSpec) -> dict[str, Any]:
    """The model block of profile.json: name, layers, context, the shape fields and a MoE model's ``moe`` shape."""
    d: dict[str, Any] = {"name": model.name, "num_layers": model.num_layers, "max_context": model.max_context}
    d.update({f: getattr(model, f) for f in SHAPE_FIELDS})
    if model.moe is not None:  # absent for dense models: their profile.json is unchanged
        d["moe"] = moe_shape(model)
    return d


def model_ops(model: ModelSpec, ops: tuple[str, ...] = ALL_OPS) -> tuple[str, ...]:
    """The ops (or unit timings) of ``ops`` that ``model`` runs: the dense MLP's where a layer is dense, the MoE
    ops where one is sparse (``moe_shared`` only with shared experts); a MoE model has no ``forward_graph``
    (the engine decodes it eagerly: ``engine.cuda_graphs.use_cuda_graphs``)."""
    moe = model.moe
    dense = moe is None or any(not model.is_moe_layer(i) for i in range(model.num_layers))
    skip = set(() if dense else DENSE_MLP_OPS)
    if moe is None:
        skip |= set(MOE_OPS)
    else:
        skip |= set(GRAPH_TIMINGS) | set(() if moe.shared_intermediate_size else ("moe_shared",))
    return tuple(op for op in ops if op not in skip)


@dataclass
class Profile:
    """A calibration profile read from disk: metadata plus the measurement table."""

    path: Path
    meta: dict[str, Any]
    table: pd.DataFrame

    @property
    def tps(self) -> list[int]:
        return [int(t) for t in self.meta["tp"]]

    @property
    def device_name(self) -> str:
        return str(self.meta["device"].get("name", "?"))

    @property
    def gpu(self) -> str | None:
        """Catalogue name of the measured GPU, or None (a CPU or a GPU not in the catalogue)."""
        return self.meta["device"].get("gpu")

    def rows(self, op: str, tp: int, variant: str = "") -> pd.DataFrame:
        """Measurements of ``op`` for ``tp`` (rows stored with tp 0 serve every TP)."""
        t = self.table
        sel = (t["op"] == op) & ((t["tp"] == tp) | (t["tp"] == 0)) & (t["variant"] == variant)
        return t[sel]

    def comm_source(self, op: str, tp: int) -> str:
        """'measured' when the profile holds timings of communication ``op`` at ``tp``, else 'roofline'."""
        comm = self.meta["communication"]
        if op == "pp_send_recv":
            return "measured" if comm.get("pp") == "measured" else "roofline"
        if op in EP_OPS:
            return "roofline"
        return "measured" if tp in comm.get("measured_tp", []) else "roofline"

    def check_model(self, model: ModelSpec) -> None:
        """Refuse a model whose op shapes differ from the profiled one."""
        m = self.meta["model"]
        diff = [f"{f} {brief(m.get(f))} (profile) vs {getattr(model, f)!r} ({brief(model.name)})"
                for f in SHAPE_FIELDS if m.get(f) != getattr(model, f)]
        if m.get("moe") != moe_shape(model):
            diff.append(f"moe {brief(m.get('moe'), 120)} (profile) vs {brief(moe_shape(model), 120)} "
                        f"({brief(model.name)})")
        if diff:
            raise ProfileError(f"profile {brief_name(self.path)} was measured for model {brief(m.get('name'))}, whose "
                               f"shapes differ from {brief(model.name)}: " + "; ".join(diff))

    def missing_ops(self, tp: int, ops: tuple[str, ...] | None = None) -> list[str]:
        """Ops (default: those the profiled model runs) with no measurement for ``tp`` (communication counts as
        present when delegated to the roofline)."""
        ops = model_ops(profile_model(self)) if ops is None else ops
        have = set(self.table.loc[(self.table["tp"] == tp) | (self.table["tp"] == 0), "op"])
        out = []
        for op in ops:
            if op in COMMUNICATION_OPS and self.comm_source(op, tp) == "roofline":
                continue
            if op not in have:
                out.append(op)
        return out

    def check_usable(self, model: ModelSpec, tp: int) -> None:
        """Refuse a profile that is partial, of another model shape, of other TPs, or that lacks an op."""
        self.check_model(model)
        where = f"profile {brief_name(self.path)}"
        if tp not in self.tps:
            raise ProfileError(f"{where} holds TP {', '.join(map(str, self.tps))}, not TP {tp}; "
                               f"calibrate with --tp {tp}")
        missing = self.missing_ops(tp, model_ops(model))
        if missing:
            raise ProfileError(f"{where} has no measurements for op(s) {', '.join(missing)} at TP {tp}"
                               + (" (calibration was stopped early; rerun `servesim calibrate` with the same "
                                  "--out to resume)" if self.meta.get("status") != "complete" else ""))
        if self.meta.get("status") != "complete":
            raise ProfileError(f"{where} is {brief(self.meta.get('status'))}, not complete (calibration was stopped "
                               "early); rerun `servesim calibrate` with the same --out to resume")


def profile_folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.name in (PROFILE_JSON, MEASUREMENTS_CSV) else p


def read_meta(path: str | Path) -> dict[str, Any]:
    """profile.json of a profile folder, validated: every key known and of its type, every size bounded."""
    folder = profile_folder(path)
    f = folder / PROFILE_JSON
    if not _exists(folder, dir_=True):
        raise ProfileError(f"profile {brief_name(folder)} does not exist (expected a folder with {PROFILE_JSON} and "
                           f"{MEASUREMENTS_CSV}, as written by `servesim calibrate --out`)")
    if not _exists(f):
        raise ProfileError(f"{brief_name(f)}: missing; {brief_name(folder)} is not a calibration profile")
    meta = read_json_object(f, ProfileError, what=PROFILE_JSON)
    where = brief_name(f)

    def fail(key: str, why: str) -> ProfileError:
        line = meta.line_of(key)
        return ProfileError(f"{where}{f':{line}' if line else ''}: field '{key}': {why}")

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ProfileError(f"{where}: missing field(s) {', '.join(missing)}")
    for key, value in meta.items():
        if key not in META_TYPES:
            raise fail(key, "unknown field (profile.json holds the fields servesim's calibrator writes: "
                            "sim.cost.profile_format.META_TYPES)")
        if not (value is None and key in NULLABLE_META) and not _is(value, META_TYPES[key]):
            raise fail(key, f"must be {_TYPE_NAMES[META_TYPES[key]]}, got {brief(value)}")
    if meta["format"] != FORMAT:
        raise fail("format", f"format is {brief(meta['format'])}, expected {FORMAT!r}")
    if meta["version"] not in READABLE_VERSIONS:
        raise fail("version", f"version {brief(meta['version'])} is not supported (this servesim reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}; recalibrate with `servesim calibrate`)")
    tps = meta["tp"]
    if not (tps and len(tps) <= MAX_PARALLEL and all(size_problem(t, MAX_PARALLEL) is None for t in tps)):
        raise fail("tp", f"field tp must be a non-empty list of integers from 1 to {MAX_PARALLEL:,}, got {brief(tps)}")
    if meta["dtype_bytes"] not in (1, 2, 4, 8):
        raise fail("dtype_bytes", f"field dtype_bytes must be 1, 2, 4 or 8, got {brief(meta['dtype_bytes'])}")
    if "block_size" in meta and (why := size_problem(meta["block_size"], MAX_BLOCK_SIZE, bound="tokens per block")):
        raise fail("block_size", why)
    for block, checks in NESTED_META.items():
        for key, (kind, check) in checks.items():
            value = (meta.get(block) or {}).get(key)
            if value is not None and (not _is(value, kind) or (why := check(value))):
                raise fail(f"{block}.{key}", why if _is(value, kind) else
                           f"must be {_TYPE_NAMES[kind]}, got {brief(value)}")
    model = meta["model"]
    miss_shape = [k for k in SHAPE_FIELDS if model.get(k) is None]
    if miss_shape:
        raise fail("model", f"field model lacks {', '.join(miss_shape)}")
    wake = meta.get("wake")
    if wake is not None:
        cols = ("idle_s", "host_extra_s", "device_extra_s") + (("latency_s",) if "latency_s" in wake else ())
        if not (all(isinstance(wake.get(c), list) for c in cols)
                and len({len(wake[c]) for c in cols}) == 1 and wake["idle_s"]
                and all(_is(x, (int, float)) and x >= 0 for c in cols for x in wake[c])):
            raise fail("wake", f"field wake must hold equal, non-empty lists {', '.join(cols)} of numbers >= 0")
    return meta


def _exists(p: Path, dir_: bool = False) -> bool:
    """Whether ``p`` exists (a folder, with ``dir_``); False for a name the system cannot look up."""
    try:
        return p.is_dir() if dir_ else p.exists()
    except (OSError, ValueError):
        return False


def _is(value: Any, kind: tuple[type, ...]) -> bool:
    """Whether ``value`` is a JSON value of ``kind`` (a boolean is not a number; a number is finite)."""
    if isinstance(value, bool):
        return bool in kind
    return isinstance(value, kind) and (not isinstance(value, float) or math.isfinite(value))


def _empty_table() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="int64") for c in COLUMNS})
    df["op"] = df["op"].astype(str)
    df["variant"] = df["variant"].astype(str)
    for c in FLOAT_COLUMNS:
        df[c] = df[c].astype(float)
    return df


def read_measurements(path: str | Path, allow_missing: bool = False) -> pd.DataFrame:
    """measurements.csv of a profile folder, validated (messages name the line and field)."""
    f = profile_folder(path) / MEASUREMENTS_CSV
    where = brief_name(f)
    if not _exists(f):
        if allow_missing:
            return _empty_table()
        raise ProfileError(f"{where}: missing; calibration wrote no measurements")
    try:
        data = read_input_bytes(f, max_bytes=MAX_CSV_BYTES)
    except InputTooLargeError as e:
        raise ProfileError(str(e)) from None
    except (OSError, ValueError) as e:
        raise ProfileError(f"{where}: cannot read: {brief_text(getattr(e, 'strerror', None) or e)}") from None
    header, seen = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(","), set()
    for col in header:  # pandas would rename a repeated column silently ('tokens.1')
        if col in seen:
            raise ProfileError(f"{where}:1: column {brief(col)} given twice")
        seen.add(col)
    try:
        raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ProfileError(f"{where}: not a readable CSV: {brief_text(e)}") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ProfileError(f"{where}:1: header lacks column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
    raw = raw[list(COLUMNS)]
    line = np.arange(len(raw)) + 2  # 1-based, after the header

    def fail(mask: np.ndarray, field: str, what: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise ProfileError(f"{where}:{line[i]}: {field} {what}, got {brief(raw[field].iloc[i])}")

    fail(~raw["op"].isin(ALL_OPS + UNIT_TIMINGS + GRAPH_TIMINGS).to_numpy(), "op", "must be an op of sim.ops")
    unit = raw["op"].isin(UNIT_TIMINGS + GRAPH_TIMINGS).to_numpy()
    fail(~unit & ~raw["variant"].isin(["", MIXED]).to_numpy(), "variant", f"must be empty or {MIXED!r}")
    fail(unit & ~raw["variant"].isin(ITERATION_VARIANTS).to_numpy(), "variant",
         f"of a {'/'.join(UNIT_TIMINGS)} row must be one of {', '.join(ITERATION_VARIANTS)}")
    out = pd.DataFrame({"op": raw["op"], "variant": raw["variant"]})
    for c in INT_COLUMNS:  # ASCII digits only: Python's int() would read '١٢'; 18 digits stay within int64
        ok = raw[c].str.fullmatch(r"[0-9]{1,18}").astype(bool)
        least = 1 if c == "repeats" else 0
        out[c] = v = pd.to_numeric(raw[c].where(ok, "0")).astype("int64")
        fail(~ok.to_numpy() | (v < least).to_numpy(), c, f"must be an integer >= {least}")
        fail((v > INT_LIMITS[c]).to_numpy(), c, f"must be at most {INT_LIMITS[c]:,} (servesim's bound)")
    for c in FLOAT_COLUMNS:
        ok = raw[c].str.fullmatch(r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+\.").astype(bool)
        v = pd.to_numeric(raw[c].where(ok), errors="coerce").to_numpy(dtype=float)
        fail(~np.isfinite(v) | (v <= 0), c, "must be a positive number of seconds")
        out[c] = v
    counts_seqs = out["op"].isin(SEQ_ROW_OPS).to_numpy()
    fail(counts_seqs & (out["seqs"] == 0).to_numpy(), "seqs", "must be >= 1 in a row of a per-sequence, attention "
                                                              "or whole-unit op (it counts sequences)")
    fail((out["tokens"] == 0).to_numpy(), "tokens", "must be >= 1 (a row times at least one token)")
    fail((out["op"] == "attn_decode").to_numpy() & (out["context"] == 0).to_numpy(), "context",
         "must be >= 1 in an attn_decode row (keys per request, its own included)")
    eps = 1e-12
    fail((out["p10_s"] > out["median_s"] * (1 + 1e-6) + eps).to_numpy(), "p10_s", "must not exceed median_s")
    fail((out["p90_s"] < out["median_s"] * (1 - 1e-6) - eps).to_numpy(), "p90_s", "must not be below median_s")
    tp0 = out["op"].isin(TP_INDEPENDENT_OPS).to_numpy()
    fail(~tp0 & (out["tp"] == 0).to_numpy(), "tp", "must be >= 1 for a TP-dependent op")
    dup = out.duplicated(list(KEY_COLUMNS)).to_numpy()
    fail(dup, "op", "row repeats an earlier (op, tp, tokens, seqs, context, variant)")
    return out[list(COLUMNS)].reset_index(drop=True)


def read_profile(path: str | Path) -> Profile:
    """Read and validate a profile folder (or its profile.json)."""
    folder = profile_folder(path)
    meta = read_meta(folder)
    table = read_measurements(folder)
    bad_tp = sorted(set(table["tp"]) - set(meta["tp"]) - {0})
    if bad_tp:
        raise ProfileError(f"{folder / MEASUREMENTS_CSV}: rows for TP {bad_tp} that profile.json's tp "
                           f"{meta['tp']} does not list")
    return Profile(folder, meta, table)


def profile_model(profile: Profile) -> ModelSpec:
    """A ModelSpec with the profiled shapes (for reports on a profile alone)."""
    m = profile.meta["model"]
    heads, hidden = m["num_heads"], m["hidden_size"]
    where = f"{brief_name(profile.path / PROFILE_JSON)}: field 'model"
    try:
        moe = MoESpec(**m["moe"]) if m.get("moe") is not None else None
    except (TypeError, ValueError) as e:
        raise ProfileError(f"{where}.moe': {brief_text(e)}") from None
    try:  # read_meta checked each field's type and bound; ModelSpec checks how they fit together
        return ModelSpec(name=m.get("name") or "profiled", num_layers=m.get("num_layers") or 1, hidden_size=hidden,
                         num_heads=heads, num_kv_heads=m["num_kv_heads"], intermediate_size=m["intermediate_size"],
                         vocab_size=m["vocab_size"], max_context=m.get("max_context") or 4096,
                         gated_mlp=m["gated_mlp"], moe=moe,
                         head_dim_override=None if m["head_dim"] * heads == hidden else m["head_dim"])
    except ValueError as e:
        raise ProfileError(f"{where}': {brief_text(e)}") from None
