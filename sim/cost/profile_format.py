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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.catalog.models import ModelSpec
from sim.catalog.variants import MoESpec
from sim.cost.unit_rows import ITERATION_VARIANTS
from sim.jsonfile import read_json_object
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
MIXED = "mixed"  # variant of attn_decode rows whose sequences have different contexts
#: engine attention backends whose cost follows the longest sequence of a batch (meta ``attention_backend``)
PADDED_BACKENDS: tuple[str, ...] = ("sdpa",)
REQUIRED_META: tuple[str, ...] = ("format", "version", "status", "device", "dtype", "dtype_bytes", "model", "tp",
                                  "grid", "communication")


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
        diff = [f"{f} {m.get(f)!r} (profile) vs {getattr(model, f)!r} ({model.name})"
                for f in SHAPE_FIELDS if m.get(f) != getattr(model, f)]
        if m.get("moe") != moe_shape(model):
            diff.append(f"moe {m.get('moe')!r} (profile) vs {moe_shape(model)!r} ({model.name})")
        if diff:
            raise ProfileError(f"profile {self.path} was measured for model {m.get('name')!r}, whose shapes differ "
                               f"from {model.name!r}: " + "; ".join(diff))

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
        if tp not in self.tps:
            raise ProfileError(f"profile {self.path} holds TP {', '.join(map(str, self.tps))}, not TP {tp}; "
                               f"calibrate with --tp {tp}")
        missing = self.missing_ops(tp, model_ops(model))
        if missing:
            raise ProfileError(f"profile {self.path} has no measurements for op(s) {', '.join(missing)} at TP {tp}"
                               + (" (calibration was stopped early; rerun `servesim calibrate` with the same "
                                  "--out to resume)" if self.meta.get("status") != "complete" else ""))
        if self.meta.get("status") != "complete":
            raise ProfileError(f"profile {self.path} is {self.meta.get('status')!r}, not complete (calibration "
                               f"was stopped early); rerun `servesim calibrate` with the same --out to resume")


def profile_folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.name in (PROFILE_JSON, MEASUREMENTS_CSV) else p


def read_meta(path: str | Path) -> dict[str, Any]:
    """profile.json of a profile folder, validated."""
    folder = profile_folder(path)
    f = folder / PROFILE_JSON
    if not folder.is_dir():
        raise ProfileError(f"profile {folder} does not exist (expected a folder with {PROFILE_JSON} and "
                           f"{MEASUREMENTS_CSV}, as written by `servesim calibrate --out`)")
    if not f.is_file():
        raise ProfileError(f"{f}: missing; {folder} is not a calibration profile")
    meta = read_json_object(f, ProfileError)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ProfileError(f"{f}: missing field(s) {', '.join(missing)}")
    if meta["format"] != FORMAT:
        raise ProfileError(f"{f}: format is {meta['format']!r}, expected {FORMAT!r}")
    if meta["version"] not in READABLE_VERSIONS:
        raise ProfileError(f"{f}: version {meta['version']!r} is not supported (this servesim reads "
                           f"{', '.join(map(str, READABLE_VERSIONS))}; recalibrate with `servesim calibrate`)")
    for key in ("device", "model", "grid", "communication"):
        if not isinstance(meta[key], dict):
            raise ProfileError(f"{f}: field {key} must be an object")
    tps = meta["tp"]
    if not (isinstance(tps, list) and tps and all(isinstance(t, int) and t >= 1 for t in tps)):
        raise ProfileError(f"{f}: field tp must be a non-empty list of integers >= 1, got {tps!r}")
    model = meta["model"]
    miss_shape = [k for k in SHAPE_FIELDS if k not in model]
    if miss_shape:
        raise ProfileError(f"{f}: field model lacks {', '.join(miss_shape)}")
    wake = meta.get("wake")
    if wake is not None:
        cols = ("idle_s", "host_extra_s", "device_extra_s") + (("latency_s",) if "latency_s" in wake else ())
        if not (isinstance(wake, dict) and all(isinstance(wake.get(c), list) for c in cols)
                and len({len(wake[c]) for c in cols}) == 1 and wake["idle_s"]
                and all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for c in cols for x in wake[c])):
            raise ProfileError(f"{f}: field wake must hold equal, non-empty lists {', '.join(cols)} of numbers >= 0")
    if not isinstance(meta["dtype_bytes"], int) or meta["dtype_bytes"] not in (1, 2, 4, 8):
        raise ProfileError(f"{f}: field dtype_bytes must be 1, 2, 4 or 8, got {meta['dtype_bytes']!r}")
    return meta


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
    if not f.is_file():
        if allow_missing:
            return _empty_table()
        raise ProfileError(f"{f}: missing; calibration wrote no measurements")
    try:
        raw = pd.read_csv(f, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ProfileError(f"{f}: not a readable CSV: {e}") from e
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ProfileError(f"{f}:1: header lacks column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
    raw = raw[list(COLUMNS)]
    line = np.arange(len(raw)) + 2  # 1-based, after the header

    def fail(mask: np.ndarray, field: str, what: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise ProfileError(f"{f}:{line[i]}: {field} {what}, got {raw[field].iloc[i]!r}")

    fail(~raw["op"].isin(ALL_OPS + UNIT_TIMINGS + GRAPH_TIMINGS).to_numpy(), "op", "must be an op of sim.ops")
    unit = raw["op"].isin(UNIT_TIMINGS + GRAPH_TIMINGS).to_numpy()
    fail(~unit & ~raw["variant"].isin(["", MIXED]).to_numpy(), "variant", f"must be empty or {MIXED!r}")
    fail(unit & ~raw["variant"].isin(ITERATION_VARIANTS).to_numpy(), "variant",
         f"of a {'/'.join(UNIT_TIMINGS)} row must be one of {', '.join(ITERATION_VARIANTS)}")
    out = pd.DataFrame({"op": raw["op"], "variant": raw["variant"]})
    for c in INT_COLUMNS:
        v = pd.to_numeric(raw[c], errors="coerce")
        least = 1 if c == "repeats" else 0
        bad = v.isna().to_numpy() | (v.fillna(0) % 1 != 0).to_numpy() | (v.fillna(-1) < least).to_numpy()
        fail(bad, c, "must be an integer >= 1" if c == "repeats" else "must be an integer >= 0")
        out[c] = v.astype("int64")
    for c in FLOAT_COLUMNS:
        v = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=float)
        fail(~np.isfinite(v) | (v <= 0), c, "must be a positive number of seconds")
        out[c] = v
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
    heads, hidden = int(m["num_heads"]), int(m["hidden_size"])
    try:
        moe = MoESpec(**m["moe"]) if m.get("moe") is not None else None
    except (TypeError, ValueError) as e:
        raise ProfileError(f"{profile.path}/{PROFILE_JSON}: field model.moe: {e}") from e
    return ModelSpec(name=str(m.get("name", "profiled")), num_layers=int(m.get("num_layers", 1)), hidden_size=hidden,
                     num_heads=heads, num_kv_heads=int(m["num_kv_heads"]),
                     intermediate_size=int(m["intermediate_size"]), vocab_size=int(m["vocab_size"]),
                     max_context=int(m.get("max_context", 4096)), gated_mlp=bool(m["gated_mlp"]),
                     head_dim_override=None if int(m["head_dim"]) * heads == hidden else int(m["head_dim"]), moe=moe)
