"""BayesianGaussianMixture: "how many clusters?" in one fit, its cost, its answers.

Two parts, one Spark session (``local[2]``, ``common.start_spark``):

1. **Cost and answer at scale.** On the selection benchmark's data (1,000,000 x 16 from a
   6-component full mixture, ``bench_selection.make_typed_mixture(..., seed=21)``):
   ``BayesianGaussianMixture(k=10)`` with default priors against one
   ``GaussianMixture(k=10, covarianceType="full", nInit=1, initMode="kmeans")`` fit and
   against the BIC grid (``GaussianMixtureSelector``, k = 1..10 x 4 covariance types),
   all with default tol and maxIter, from the same cached input. ``--repeats`` (>= 5)
   interleaved rounds; wall times reported as medians with min and max; the effective
   k of every round.
2. **Answers on known mixtures.** The four 20,000 x 5 sets of the selection benchmark
   (k=4 full, k=3 tied, k=5 diag, k=6 spherical), fitted with k=8 and the true covariance
   type: spark_gmm's effective k against the truth and against sklearn's
   ``BayesianGaussianMixture`` (same defaults, ``max_iter`` as ours, each seed of
   ``--seeds``).

Usage::

    python benchmarks/bench_bayesian.py            # ~16 minutes here
    python benchmarks/bench_bayesian.py --quick    # 100k rows, one round, 2 seeds
    python benchmarks/bench_bayesian.py --skip-grid   # without the BIC grid, ~7 minutes

Writes ``bayesian.json`` and ``bayesian.md`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing
from bench_selection import TYPES, make_typed_mixture
from common import cached_features_frame, start_spark

HERE = Path(__file__).resolve().parent
THRESHOLD = 0.01
MAX_ITER = 100

log = logging.getLogger("bench_bayesian")


def cost_part(spark: Any, n: int, repeats: int, scratch: str, run: timing.Run,
              grid: bool = True) -> dict[str, Any]:
    from spark_gmm import BayesianGaussianMixture, GaussianMixture, GaussianMixtureSelector

    X = make_typed_mixture(n, 16, 6, "full", seed=21)
    df = cached_features_frame(spark, X, scratch)
    seed = 3
    GaussianMixture(k=2, maxIter=1, nInit=1, seed=seed).fit(df)  # warm-up
    walls = {"bayesian": timing.Repeats(), "gmm": timing.Repeats()}
    if grid:
        walls["grid"] = timing.Repeats()
    answers: list[dict[str, Any]] = []

    def timed(fn: Any) -> tuple[Any, float]:
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
        return out, time.perf_counter() - began

    for r in range(repeats):
        run.start_round(f"cost round {r + 1}")
        bayes, seconds = timed(lambda: BayesianGaussianMixture(k=10, seed=seed).fit(df))
        walls["bayesian"].add(seconds)
        gmm, seconds = timed(
            lambda: GaussianMixture(k=10, nInit=1, initMode="kmeans", seed=seed).fit(df)
        )
        walls["gmm"].add(seconds)
        choice = None
        if grid:
            selected, seconds = timed(
                lambda: GaussianMixtureSelector(
                    kValues=list(range(1, 11)), covarianceTypes=TYPES, seed=seed
                ).fit(df)
            )
            walls["grid"].add(seconds)
            choice = [selected.bestK, selected.bestCovarianceType]
        answers.append(
            {
                "effective_k": bayes.effectiveK,
                "weights_sorted": sorted(bayes.weights, reverse=True),
                "iterations": bayes.summary.numIter,
                "converged": bayes.summary.converged,
                "gmm_iterations": gmm.summary.numIter,
                "grid_choice": choice,
            }
        )
        log.info("round %d: %s", r + 1, answers[-1])
    df.unpersist()
    return {
        "n": n,
        "d": 16,
        "true_k": 6,
        "wall_s": {name: rep.summary() for name, rep in walls.items()},
        "ratio_bayesian_to_gmm": walls["bayesian"].median / walls["gmm"].median,
        "ratio_grid_to_gmm": walls["grid"].median / walls["gmm"].median if grid else None,
        "rounds": answers,
        "_repeats": walls,
    }


def answers_part(spark: Any, seeds: list[int]) -> list[dict[str, Any]]:
    from sklearn.mixture import BayesianGaussianMixture as SkBayesian

    from spark_gmm import BayesianGaussianMixture

    out = []
    for truth_k, truth_type, data_seed in [(4, "full", 1), (3, "tied", 2), (5, "diag", 3),
                                           (6, "spherical", 4)]:
        X = make_typed_mixture(20_000, 5, truth_k, truth_type, data_seed)
        cols = [f"x{i}" for i in range(X.shape[1])]
        df = spark.createDataFrame(
            [tuple(map(float, r)) for r in X], ", ".join(f"{c} double" for c in cols)
        ).cache()
        df.count()
        ours, theirs = [], []
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = BayesianGaussianMixture(
                    k=8, covarianceType=truth_type, inputCols=cols, seed=seed, maxIter=MAX_ITER
                ).fit(df)
                sk = SkBayesian(n_components=8, covariance_type=truth_type, random_state=seed,
                                max_iter=MAX_ITER).fit(X)
            ours.append(model.effectiveK)
            theirs.append(int(np.sum(sk.weights_ > THRESHOLD)))
        df.unpersist()
        out.append({"truth": [truth_k, truth_type], "spark_gmm": ours, "sklearn": theirs,
                    "seeds": seeds})
        log.info("answers: %s", out[-1])
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    c = result["cost"]
    w = c["wall_s"]
    lines = [
        "# Bayesian mixture: effective k in one fit",
        "",
        f"Written by `benchmarks/bench_bayesian.py` on {m['date_utc']}: {m['cpu']}, "
        f"{m['cores']} cores; Spark local[2]; {result['repeats']} interleaved rounds.",
        "",
        "**Publishable run.**" if result["verdict"]["publishable"]
        else "**Not publishable:** " + "; ".join(result["verdict"]["reasons"]),
        "",
        f"## {c['n']:,} x {c['d']} from {c['true_k']} full components, defaults",
        "",
        "| fit | wall s, median (min to max) |",
        "|---|---|",
        f"| BayesianGaussianMixture(k=10) | {timing.fmt_range(w['bayesian'], digits=1)} |",
        f"| GaussianMixture(k=10, full, nInit=1) | {timing.fmt_range(w['gmm'], digits=1)} |",
        *(
            [f"| BIC grid k=1..10 x 4 types | {timing.fmt_range(w['grid'], digits=1)} |"]
            if "grid" in w else []
        ),
        "",
        f"- Bayesian / one fit: {c['ratio_bayesian_to_gmm']:.2f}x (goal <= 1.5x)"
        + (f"; grid / one fit: {c['ratio_grid_to_gmm']:.2f}x" if "grid" in w else
           "; the BIC grid was not timed in this run (--skip-grid; its cost is in "
           "selection.md)"),
        f"- effective k per round (weight > {THRESHOLD}): "
        + ", ".join(str(a["effective_k"]) for a in c["rounds"])
        + f"; iterations: {', '.join(str(a['iterations']) for a in c['rounds'])}; "
        f"converged: {', '.join(str(a['converged']) for a in c['rounds'])}; the fixed-k fit's "
        f"iterations: {', '.join(str(a.get('gmm_iterations')) for a in c['rounds'])}"
        + "".join(f"; grid's choice: k={a['grid_choice'][0]} {a['grid_choice'][1]}"
                  for a in c["rounds"][:1] if a["grid_choice"]),
        "",
        f"## Known answers (20,000 x 5, k=8, the true covariance type, maxIter {MAX_ITER})",
        "",
        "| truth | spark_gmm effective k (per seed) | sklearn effective k (per seed) |",
        "|---|---|---|",
    ]
    for a in result["answers"]:
        lines.append(
            f"| k={a['truth'][0]} {a['truth'][1]} | {a['spark_gmm']} | {a['sklearn']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=timing.MIN_REPEATS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    parser.add_argument("--skip-grid", action="store_true",
                        help="do not time the BIC grid (about 8 fits' time per round)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("spark_gmm").setLevel(logging.WARNING)
    repeats = 1 if args.quick else args.repeats
    seeds = args.seeds[:2] if args.quick else args.seeds
    spark = start_spark("bench_bayesian", ui=False)
    run = timing.Run()
    with tempfile.TemporaryDirectory() as scratch:
        cost = cost_part(spark, 100_000 if args.quick else 1_000_000, repeats, scratch, run,
                         grid=not args.skip_grid)
    answers = answers_part(spark, seeds)
    spark.stop()
    walls = cost.pop("_repeats")
    result = {
        "machine": timing.machine(),
        "repeats": repeats,
        "cost": cost,
        "answers": answers,
        "rounds": run.rounds,
        "verdict": run.verdict(walls),
    }
    suffix = "_quick" if args.quick else ""
    timing.write_json(args.output_dir / f"bayesian{suffix}.json", result)
    (args.output_dir / f"bayesian{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
