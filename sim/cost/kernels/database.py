"""AIConfigurator's measured kernel databases: where they are, which framework versions a GPU has, the tables.

The ``aiconfigurator-core`` package (NVIDIA, Apache-2.0; the ``kernels`` extra pins 0.12.0) ships
parquet tables under ``aiconfigurator_core/systems/data/<system>/<op family>/<framework>/<version>/``.
We read the parquet files ourselves (pandas + pyarrow) rather than through the package's query API:
the files with their ``collection_meta.yaml`` are the published artefact, while the query API sits
on a compiled extension and model objects of its own; reading the tables keeps every price
traceable to a file, a kernel and a version, and lets the simulator memoise lookups its own way.
Finding the folder does not import the package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

PACKAGE = "aiconfigurator_core"
DISTRIBUTION = "aiconfigurator-core"
INSTALL_HINT = "pip install -e '.[kernels]' (aiconfigurator-core==0.12.0 and pyarrow)"
DEFAULT_FRAMEWORK = "vllm"
#: (op family folder, table file stem) of each table the cost model reads
TABLES: dict[str, tuple[str, str]] = {
    "gemm": ("gemm", "gemm_perf"),
    "context_attention": ("attention", "context_attention_perf"),
    "generation_attention": ("attention", "generation_attention_perf"),
    "all_reduce": ("comm", "custom_allreduce_perf"),
    "moe": ("moe", "moe_perf"),
    "moe_a2a": ("comm", "moe_a2a_perf"),
}


class KernelDatabaseError(ValueError):
    """The kernel databases are not installed, or hold nothing for the GPU, framework or version asked for."""


@lru_cache(maxsize=1)
def data_dir() -> Path:
    """The package's ``systems/data`` folder (found once, without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise KernelDatabaseError(f"the kernel databases need the aiconfigurator-core package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "systems" / "data"
    if not path.is_dir():
        raise KernelDatabaseError(f"{path}: missing; the installed aiconfigurator-core has no kernel data")
    return path


def package_version() -> str | None:
    """The installed aiconfigurator-core version, or None."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_key(v: str) -> tuple:
    """Sort key of a version folder name such as 0.24.0 or 1.3.0rc20 (numbers compare as numbers)."""
    parts = []
    for piece in v.replace("rc", ".rc.").replace("post", ".post.").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def versions(system: str, framework: str, table: str) -> list[str]:
    """Versions of ``framework`` with ``table`` measured on ``system``, oldest first."""
    family, stem = TABLES[table]
    folder = data_dir() / system / family / framework
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if (p / f"{stem}.parquet").is_file()), key=_version_key)


def parse_kernel_db(text: str | None) -> tuple[str, str | None]:
    """``FRAMEWORK[:VERSION]`` (the ``--kernel-db`` flag) -> (framework, version or None for the newest)."""
    if not text:
        return DEFAULT_FRAMEWORK, None
    framework, _, version = text.partition(":")
    return framework.strip().lower(), version.strip() or None


@dataclass(frozen=True)
class TableRef:
    """One measured table: its file, framework, version and system (what a price names as its source)."""

    table: str
    system: str
    framework: str
    version: str
    path: Path

    def describe(self) -> str:
        return f"{self.system}/{self.framework}/{self.version}/{self.path.name}"


def resolve(system: str, framework: str, version: str | None) -> dict[str, TableRef]:
    """The table of each kind to read for ``system``: ``version`` (default: the newest version with GEMM and
    attention tables), or, for a table that version lacks, the newest earlier version that has it."""
    have = {t: versions(system, framework, t) for t in TABLES}
    if not have["gemm"]:
        raise KernelDatabaseError(f"the kernel database has no {framework} GEMM measurements for {system} "
                                  f"(frameworks there: {', '.join(frameworks(system)) or 'none'})")
    if version is None:
        both = [v for v in have["gemm"] if v in have["context_attention"] and v in have["generation_attention"]]
        version = (both or have["gemm"])[-1]
    if version not in have["gemm"]:
        raise KernelDatabaseError(f"no {framework} {version} GEMM table for {system}; versions with one: "
                                  f"{', '.join(have['gemm'])}")
    out: dict[str, TableRef] = {}
    for table, vs in have.items():
        usable = [v for v in vs if _version_key(v) <= _version_key(version)] or vs
        if not usable:
            continue
        family, stem = TABLES[table]
        v = usable[-1]
        out[table] = TableRef(table, system, framework, v, data_dir() / system / family / framework / v /
                              f"{stem}.parquet")
    return out


def frameworks(system: str) -> list[str]:
    """Frameworks with GEMM tables for ``system``."""
    folder = data_dir() / system / "gemm"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


@lru_cache(maxsize=32)
def read_table(path: Path) -> pd.DataFrame:
    """A parquet table (read once per process)."""
    try:
        return pd.read_parquet(path)
    except ImportError as e:  # pandas without pyarrow
        raise KernelDatabaseError(f"reading {path} needs pyarrow: {INSTALL_HINT}") from e


def pick_kernel(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of the kernel measured most often among ``rows`` (ties: by name), and its name."""
    counts = rows["kernel_source"].value_counts()
    best = min(counts.index[counts == counts.max()])
    return rows[rows["kernel_source"] == best], str(best)
