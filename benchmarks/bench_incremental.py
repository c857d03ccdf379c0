"""Incremental EM: a daily update against a warm-started refit of the growing window, and
how a forgetting model follows drifting data.

Two parts:

1. **Cost** (Spark ``local[2]``, ``common.start_spark``). 30 daily batches of 100,000 rows
   x 8 features from a 6-component full mixture, one Parquet directory partitioned by
   ``day``. Each of ``--repeats`` (>= 5) rounds runs, from the same start (a fit of
   day 0):

   * the 30 updates in order, ``model.update(<day t>)`` (decay 1, one pass), each timed;
   * refits of the growing window ``day <= t`` for t in :data:`REFIT_DAYS`, each
     warm-started (``initialModel``) from the day-(t-1) model of the updates, timed.

   Every timed step reads its rows from the Parquet files (``where day ...``), as a
   scheduled job would. Reported: the median update time (min, max over rounds, median
   over days), each refit's median (min, max), and the quality at day 30: the mean
   log-likelihood of all 3,000,000 rows under the last update and under the day-30 refit.
2. **Drift** (numpy only, :mod:`spark_gmm.incremental` on :class:`InMemoryData`). 30
   batches of 20,000 rows whose component means move by a fixed step per batch. The
   distance of each model's means to the batch's true means, per batch, for: forgetting
   with half-lives 2 and 5 batches, no forgetting (decay 1), and a refit on all rows so
   far. Written as a table and a plot (``incremental_drift.png``, with matplotlib).

Usage::

    python benchmarks/bench_incremental.py          # ~15 minutes here
    python benchmarks/bench_incremental.py --quick  # 10,000-row days, one round

Writes ``incremental.json`` / ``incremental.md`` (and the plot) to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing
from common import make_mixture_data, start_spark

HERE = Path(__file__).resolve().parent
DAYS = 30
D, K = 8, 6
REFIT_DAYS = (1, 10, 20, 29)

log = logging.getLogger("bench_incremental")


def write_days(rows_per_day: int, scratch: str) -> tuple[str, list[str]]:
    """The 30 days as Parquet partitioned by ``day`` (written by pyarrow, one file per
    day); their feature column names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = make_mixture_data(rows_per_day * DAYS, D, K, seed=18)
    cols = [f"x{j}" for j in range(D)]
    path = os.path.join(scratch, "days")
    for t in range(DAYS):
        rows = X[t * rows_per_day : (t + 1) * rows_per_day]
        table = pa.table({c: rows[:, j] for j, c in enumerate(cols)})
        os.makedirs(os.path.join(path, f"day={t}"))
        pq.write_table(table, os.path.join(path, f"day={t}", "part-0.parquet"))
    return path, cols


def cost_part(spark: Any, rows_per_day: int, repeats: int, scratch: str,
              run: timing.Run) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from spark_gmm import GaussianMixture

    path, cols = write_days(rows_per_day, scratch)
    days = spark.read.parquet(path)

    def day(t: int) -> Any:
        return days.where(F.col("day") == t)

    start = GaussianMixture(k=K, inputCols=cols, seed=1, nInit=1).fit(day(0))
    start.update(day(0))  # warm-up of the update path (not timed)
    # One value per round: the median of its 29 updates (the days are alike: 100,000 rows).
    update_s = timing.Repeats()
    every_update: list[list[float]] = []
    refit_s = {t: timing.Repeats() for t in REFIT_DAYS}
    refit_iters: dict[int, list[int]] = {t: [] for t in REFIT_DAYS}
    quality: dict[str, float] = {}
    for r in range(repeats):
        run.start_round(f"round {r + 1}")
        model, models = start, {0: start}
        round_times = []
        for t in range(1, DAYS):
            began = time.perf_counter()
            model = model.update(day(t))
            round_times.append(time.perf_counter() - began)
            models[t] = model
        update_s.add(float(np.median(round_times)))
        every_update.append(round_times)
        for t in REFIT_DAYS:
            began = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                refit = GaussianMixture(
                    k=K, inputCols=cols, initialModel=models[t - 1], seed=1
                ).fit(days.where(F.col("day") <= t))
            refit_s[t].add(time.perf_counter() - began)
            refit_iters[t].append(refit.summary.numIter)
        log.info("round %d: update median %.2f s; refits %s", r + 1, update_s.values[-1],
                 {t: round(refit_s[t].values[-1], 2) for t in REFIT_DAYS})
        if r == 0:
            X = np.asarray(days.select(*cols).toPandas(), dtype=np.float64)
            quality = {
                "updated": float(model.score(X)),
                "refit": float(refit.score(X)),
            }
    return {
        "rows_per_day": rows_per_day,
        "d": D,
        "k": K,
        "update_s": update_s.summary(),
        "every_update_s": every_update,
        "refit_s": {str(t): refit_s[t].summary() for t in REFIT_DAYS},
        "refit_iterations": {str(t): refit_iters[t] for t in REFIT_DAYS},
        "quality_day_29": quality,
        "_repeats": {"update": update_s, **{f"refit day {t}": refit_s[t] for t in REFIT_DAYS}},
    }


def drift_part(rows: int) -> dict[str, Any]:
    from spark_gmm.em import InMemoryData, fit_em
    from spark_gmm.incremental import Schedule, from_parameters, update_parameters

    rng = np.random.default_rng(5)
    k, d = 3, 2
    centres = np.array([[0.0, 0.0], [6.0, 1.5], [1.5, 7.5]])
    step = np.array([0.15, 0.1])
    cov = np.array([[1.0, 0.3], [0.3, 0.6]])

    def batch(t: int) -> np.ndarray:
        labels = rng.choice(k, size=rows, p=[0.5, 0.3, 0.2])
        noise = rng.multivariate_normal(np.zeros(d), cov, size=rows)
        return centres[labels] + t * step + noise

    batches = [batch(t) for t in range(DAYS)]

    def error(params: Any, t: int) -> float:
        truth = centres + t * step
        d2 = ((params.means[:, None, :] - truth[None]) ** 2).sum(-1)
        return float(np.sqrt(d2.min(axis=0)).max())

    start = fit_em(InMemoryData(batches[0]), k, "full", seed=1).params
    schedules = {
        "half-life 2": Schedule.from_params(half_life=2.0),
        "half-life 5": Schedule.from_params(half_life=5.0),
        "decay 1": Schedule.from_params(decay_factor=1.0),
    }
    errors: dict[str, list[float]] = {name: [error(start, 0)] for name in schedules}
    errors["refit on all rows"] = [error(start, 0)]
    state = {name: (start, from_parameters(start, rows, 1e-6)) for name in schedules}
    refit = start
    for t in range(1, DAYS):
        for name, schedule in schedules.items():
            params, running = state[name]
            out = update_parameters(InMemoryData(batches[t]), params, running, t - 1,
                                    schedule, 1e-6)
            state[name] = (out.params, out.running)
            errors[name].append(error(out.params, t))
        refit = fit_em(InMemoryData(np.vstack(batches[: t + 1])), k, "full",
                       initial_params=refit).params
        errors["refit on all rows"].append(error(refit, t))
    return {"rows_per_batch": rows, "step": step.tolist(), "errors": errors}


def plot_drift(drift: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in drift["errors"].items():
        ax.plot(range(len(values)), values, label=name, marker=".")
    ax.set_xlabel("batch")
    ax.set_ylabel("error of the means")
    ax.set_title(
        "Largest distance from a true mean to its nearest component\n"
        "(means drifting by (0.15, 0.1) per batch)",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(result: dict[str, Any]) -> str:
    m, c, dr = result["machine"], result["cost"], result["drift"]
    lines = [
        "# Incremental EM: daily updates and drift",
        "",
        f"Written by `benchmarks/bench_incremental.py` on {m['date_utc']}: {m['cpu']}, "
        f"{m['cores']} cores; Spark local[2]; {result['repeats']} rounds.",
        "",
        "**Publishable run.**" if result["verdict"]["publishable"]
        else "**Not publishable:** " + "; ".join(result["verdict"]["reasons"]),
        "",
        f"## {DAYS} days of {c['rows_per_day']:,} rows x {c['d']}, k={c['k']} (full)",
        "",
        "| step | wall s, median (min to max) |",
        "|---|---|",
        f"| `model.update(day t)`: per round the median of days 1..{DAYS - 1} | "
        f"{timing.fmt_range(c['update_s'], digits=2)} |",
    ]
    for t, rep in c["refit_s"].items():
        rows = (int(t) + 1) * c["rows_per_day"]
        lines.append(
            f"| warm-started refit of days 0..{t} ({rows:,} rows; iterations "
            f"{c['refit_iterations'][t]}) | {timing.fmt_range(rep, digits=2)} |"
        )
    last = str(max(int(t) for t in c["refit_s"]))
    q = c["quality_day_29"]
    lines += [
        "",
        f"- The refit of days 0..{last} takes "
        f"{c['refit_s'][last]['median'] / c['update_s']['median']:.1f}x one daily update "
        "(medians).",
        f"- Mean log-likelihood of all rows after day {last}: updates (decay 1, one pass a "
        f"day) {q['updated']:.5f}, refit {q['refit']:.5f}.",
        "",
        f"## Drift ({dr['rows_per_batch']:,}-row batches, means moving by {dr['step']} per "
        "batch, numpy)",
        "",
        "Largest distance from a true mean to the nearest component, after batch t:",
        "",
        "| model | t=5 | t=10 | t=20 | t=29 |",
        "|---|---|---|---|---|",
    ]
    for name, values in dr["errors"].items():
        lines.append(
            f"| {name} | " + " | ".join(f"{values[t]:.3f}" for t in (5, 10, 20, 29)) + " |"
        )
    if result.get("plot"):
        lines += ["", f"![drift]({result['plot']})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=timing.MIN_REPEATS)
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("spark_gmm").setLevel(logging.WARNING)
    repeats = 1 if args.quick else args.repeats
    suffix = "_quick" if args.quick else ""
    drift = drift_part(2_000 if args.quick else 20_000)
    spark = start_spark("bench_incremental", ui=False)
    run = timing.Run()
    with tempfile.TemporaryDirectory() as scratch:
        cost = cost_part(spark, 10_000 if args.quick else 100_000, repeats, scratch, run)
    spark.stop()
    walls = cost.pop("_repeats")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    plot = f"incremental_drift{suffix}.png"
    result = {
        "machine": timing.machine(),
        "repeats": repeats,
        "cost": cost,
        "drift": drift,
        "plot": plot if plot_drift(drift, args.output_dir / plot) else None,
        "rounds": run.rounds,
        "verdict": run.verdict(walls),
    }
    timing.write_json(args.output_dir / f"incremental{suffix}.json", result)
    (args.output_dir / f"incremental{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
