"""Shared rules for every benchmark that publishes a number.

* Repeats are interleaved (every implementation once per round) and there are at least
  :data:`MIN_REPEATS` of them.
* A case is reported as the **median** of its repeats with the min and max beside it;
  a ratio is the ratio of two medians from the same run.
* Before each round the script waits (up to :data:`QUIET_WAIT_S`) for the 1-minute load
  average to fall below :data:`MAX_LOAD_PER_CORE` per core (the previous round's own
  processes take a minute to leave it), and records it; a run is *publishable* only if
  no round started on a busy machine and every published case's spread ``max / min``
  stays within :data:`MAX_SPREAD`. A script still writes the results
  of a run that is not publishable, marked so, and says why; the docs quote only
  publishable runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_REPEATS = 5
MAX_SPREAD = 1.5
MAX_LOAD_PER_CORE = 0.75
QUIET_WAIT_S = 240.0


def machine() -> dict[str, Any]:
    """Where and with what a run happened."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            mem_kib = int(fh.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    versions: dict[str, str] = {"python": platform.python_version()}
    for name in ("numpy", "pyspark", "pyarrow", "pandas", "sklearn"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        **provenance(),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "versions": versions,
    }


def provenance() -> dict[str, Any]:
    """The commit a run measured, whether the tree had uncommitted changes to tracked
    files (a dirty run measures code no commit holds), and the command that ran."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        commit, status = "unknown", ""
    return {
        "commit": commit,
        "dirty": bool(status.strip()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def load_average() -> float:
    return os.getloadavg()[0]


@dataclass
class Repeats:
    """The values of one case over the repeats of a run."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def spread(self) -> float:
        """max / min (1.0 for identical repeats)."""
        lo, hi = min(self.values), max(self.values)
        return hi / lo if lo > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.values) if self.values else None,
            "max": max(self.values) if self.values else None,
            "spread": self.spread if self.values else None,
            "repeats": list(self.values),
        }


@dataclass
class Run:
    """Load readings of a run's rounds and the verdict on publishing it."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    cores: int = os.cpu_count() or 1

    def start_round(self, label: str) -> None:
        """Wait for a quiet machine (or QUIET_WAIT_S), then record the load."""
        began = time.monotonic()
        while load_average() > MAX_LOAD_PER_CORE * self.cores:
            if time.monotonic() - began > QUIET_WAIT_S:
                break
            time.sleep(5.0)
        self.rounds.append(
            {
                "round": label,
                "load_1min": load_average(),
                "waited_s": round(time.monotonic() - began, 1),
            }
        )

    def busy_rounds(self, own_processes: float = 0.0) -> list[str]:
        """Rounds that started with more load than this run's own processes explain."""
        limit = MAX_LOAD_PER_CORE * self.cores + own_processes
        return [r["round"] for r in self.rounds if r["load_1min"] > limit]

    def verdict(self, cases: dict[str, Repeats], own_processes: float = 0.0) -> dict[str, Any]:
        reasons = []
        short = [name for name, rep in cases.items() if len(rep.values) < MIN_REPEATS]
        if short:
            reasons.append(f"fewer than {MIN_REPEATS} repeats: {', '.join(short)}")
        wide = [
            f"{name} ({rep.spread:.2f})"
            for name, rep in cases.items()
            if rep.values and rep.spread > MAX_SPREAD
        ]
        if wide:
            reasons.append(f"spread max/min above {MAX_SPREAD}: {', '.join(wide)}")
        busy = self.busy_rounds(own_processes)
        if busy:
            reasons.append(f"machine busy at the start of: {', '.join(busy)}")
        return {
            "publishable": not reasons,
            "reasons": reasons,
            "rules": {
                "min_repeats": MIN_REPEATS,
                "max_spread": MAX_SPREAD,
                "max_load_per_core": MAX_LOAD_PER_CORE,
            },
        }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def fmt_range(rep: dict[str, Any], unit: str = "", digits: int = 3) -> str:
    """``0.754 (0.731 to 0.802)`` from a :meth:`Repeats.summary`."""
    return (
        f"{rep['median']:.{digits}f}{unit} ({rep['min']:.{digits}f} to {rep['max']:.{digits}f})"
    )


def cases_table(cases: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows ``| case | seconds |`` of :meth:`Repeats.summary` values."""
    return ["| case | seconds |", "|---|---|"] + [
        f"| {name} | {fmt_range(rep)} |" for name, rep in cases.items()
    ]


def ratios_table(ratios: dict[str, float]) -> list[str]:
    """Markdown rows ``| ratio of medians | value |``."""
    return ["| ratio of medians | value |", "|---|---|"] + [
        f"| {name} | {value:.2f} |" for name, value in ratios.items()
    ]


def provenance_line(m: dict[str, Any]) -> str:
    """``Commit <sha> (dirty tree); `<command>`; <date>`` from :func:`machine`."""
    dirty = " (dirty tree)" if m["dirty"] else ""
    return f"Commit {m['commit']}{dirty}; `{m['command']}`; {m['date_utc']}"
