"""Fuzzing the error contract: over 1,700 seeded hostile inputs to every reader and numeric flag, run in process.

Each must be refused with one line on stderr and exit 2 (or, for inputs that may be served, end without a
traceback); none may hang. The counts per family and outcome are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from sim.cli.main import build_parser, main
from tests.fuzz_corpus import Case, all_cases
from tests.paths import ROOT

PROFILE = ROOT / "calibration" / "profiles" / "tiny-cpu"
#: seconds one case may take before it counts as a hang (a refusal takes milliseconds; a wrongly accepted
#: input runs a four-request simulation, well under a second)
HANG_S = 20


class _Hang(BaseException):
    """Raised by the alarm inside a case that ran past HANG_S (a BaseException: main's handlers let it through)."""


def _on_alarm(signum, frame):
    raise _Hang()


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """(outcome, stderr): refused, served, hang, traceback, or a contract breach (accepted, rc N, lines)."""
    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    argv = [a.replace("{dir}", str(folder)) for a in case.argv]
    err, out = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
    except _Hang:
        return "hang", err.getvalue()
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - anything escaping main is a traceback for the user
        return "traceback", f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in text or "internal error" in text:
        return "traceback", text
    if rc == 0:
        return ("accepted" if case.refuse else "served"), text
    one_line = len(lines) == 1 and ": error: " in lines[0] and len(lines[0]) <= 600
    if rc == 2 and one_line:
        return ("refused" if case.must_name is None or case.must_name in text
                else f"refused without naming {case.must_name}"), text
    if not case.refuse and rc == 1 and one_line:
        return "served", text
    return f"rc {rc}, {len(lines)} line(s)", text


def test_a_thousand_hostile_inputs_are_refused_cleanly(capsys):
    profile_json = json.loads((PROFILE / "profile.json").read_text())
    measurements = (PROFILE / "measurements.csv").read_text()
    cases = all_cases(28, build_parser(), profile_json, measurements)
    assert len(cases) >= 1700 and len({c.family for c in cases}) >= 16
    outcomes: Counter[tuple[str, str]] = Counter()
    bad: list[str] = []
    took: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            t0 = time.perf_counter()
            outcome, err = run_case(case, folder)
            took.append((time.perf_counter() - t0, f"{case.family} [{case.what}]"))
            outcomes[case.family, outcome] += 1
            if outcome not in ("refused", "served"):
                bad.append(f"{case.family} [{case.what}] -> {outcome}: {err.strip()[:200]!r}")
    with capsys.disabled():
        families = sorted({f for f, _ in outcomes})
        kinds = sorted({o for _, o in outcomes})
        print(f"\n{len(cases)} hostile inputs; outcome counts per family:")
        print(f"{'family':18s}" + "".join(f"{k:>12s}" for k in kinds))
        for f in families:
            print(f"{f:18s}" + "".join(f"{outcomes[f, k]:12d}" for k in kinds))
        print("slowest:", ", ".join(f"{w} {t:.2f} s" for t, w in sorted(took, reverse=True)[:8]))
    assert not bad, f"{len(bad)} inputs broke the contract:\n" + "\n".join(bad[:60])
