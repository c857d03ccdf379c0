"""Fit and selection reports: ``report.json`` and, when matplotlib is installed, PNG plots.

Written on the driver's local file system. Spark settings are included with every value
whose key looks like a credential (secret, password, token, key) redacted, and user
information in URLs of the job's settings (``s3a://user:secret@bucket/...``) is masked.
"""

from __future__ import annotations

import json
import logging
import platform
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["redact_conf", "redact_config", "write_fit_report", "write_selection_report"]

log = logging.getLogger("spark_gmm")

_SECRET = re.compile(r"secret|password|passwd|token|credential|key", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_PLOT_SAMPLE = 5000


def redact_conf(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Spark settings with credential-like values replaced by ``*****(redacted)``."""
    return {k: ("*****(redacted)" if _SECRET.search(k) else v) for k, v in sorted(pairs)}


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """Job settings with ``user:password@`` in URLs masked (paths may carry credentials)."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return _URL_USERINFO.sub("*****@", value)
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {k: clean(v) for k, v in config.items()}


def _spark_section(spark: Any) -> dict[str, Any]:
    """The Spark application, master, version and (redacted) settings of a report.

    Over Spark Connect (no SparkContext) the same facts come from the session's conf:
    the server's application id and master, and the settings the session can see.
    """
    from spark_gmm.engine import is_connect

    if is_connect(spark):
        conf = dict(getattr(spark.conf, "getAll", None) or {})  # pyspark 3.5 has no getAll
        return {
            "app_id": conf.get("spark.app.id") or spark.conf.get("spark.app.id", None),
            "master": conf.get("spark.master") or spark.conf.get("spark.master", None),
            "version": spark.version,
            "connect": True,
            "conf": redact_conf(sorted(conf.items())),
        }
    return {
        "app_id": spark.sparkContext.applicationId,
        "master": spark.sparkContext.master,
        "version": spark.version,
        "connect": False,
        "conf": redact_conf(spark.sparkContext.getConf().getAll()),
    }


def _versions() -> dict[str, str]:
    import pyarrow
    import pyspark

    from spark_gmm import __version__

    return {
        "spark_gmm": __version__,
        "pyspark": pyspark.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }


def write_fit_report(
    directory: str,
    spark: Any,
    config: Any,
    model: Any,
    gmm: Any,
    df: Any,
    seconds: float,
) -> list[str]:
    """Write ``report.json`` and plots for a fit; return the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    s = gmm.summary
    report = {
        "config": redact_config(asdict(config)),
        "params": {p.name: v for p, v in gmm.extractParamMap().items() if p.name != "initialModel"},
        "rows": {
            "read": s.numRows + s.numSkippedRows,
            "skipped": s.numSkippedRows,
            "used": s.numRows,
        },
        "iterations": [
            {"iteration": i + 1, "mean_log_likelihood": ll, "seconds": sec}
            for i, (ll, sec) in enumerate(zip(s.logLikelihoodHistory, s.iterationSeconds))
        ],
        "log_likelihood_history": s.logLikelihoodHistory,
        "converged": s.converged,
        "num_iter": s.numIter,
        "mean_log_likelihood": s.meanLogLikelihood,
        "log_likelihood": s.logLikelihood,
        "bic": s.bic,
        "aic": s.aic,
        "weights": gmm.weights,
        "means": gmm.means.tolist(),
        "cluster_sizes": s.clusterSizes,
        "candidate_log_likelihoods": s.candidateLogLikelihoods,
        **_bayesian_section(gmm),
        "spark": _spark_section(spark),
        "versions": _versions(),
        "wall_seconds": seconds,
    }
    paths = [out / "report.json"]
    paths[0].write_text(json.dumps(report, indent=2, default=str))
    if _can_plot("report.json written, plots skipped"):
        paths += _plots(out, model, gmm, df)
    return [str(p) for p in paths]


def _bayesian_section(gmm: Any) -> dict[str, Any]:
    """A Bayesian mixture's own numbers: effective k, the weights sorted, the lower
    bound per iteration (its log-likelihood history is empty)."""
    s = gmm.summary
    if not hasattr(s, "effectiveK"):
        return {}
    order = sorted(range(len(gmm.weights)), key=lambda j: -gmm.weights[j])
    return {
        "bayesian": {
            "effective_k": s.effectiveK,
            "effective_k_threshold": gmm.getEffectiveKThreshold(),
            "weights_sorted": [[j, gmm.weights[j]] for j in order],
            "lower_bound": s.lowerBound,
            "lower_bound_history": s.lowerBoundHistory,
            "weight_concentration_prior_type": gmm.getWeightConcentrationPriorType(),
            "merge_components": gmm.getMergeComponents(),
        }
    }


def _can_plot(without_it: str) -> bool:
    """Whether plots can be drawn (matplotlib, headless backend); else warn, saying what
    the report still has (``without_it``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        log.warning("matplotlib is not installed: %s (pip install 'spark_gmm[plot]').", without_it)
        return False
    return True


def _feature_sample(model: Any, gmm: Any, df: Any) -> np.ndarray:
    """Up to ~5000 rows of the features the mixture saw (after any scaling)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    n = gmm.summary.numRows
    fraction = min(1.0, 2.0 * _PLOT_SAMPLE / max(n, 1))
    sample = df.sample(fraction=fraction, seed=0).limit(_PLOT_SAMPLE)
    if model is not gmm:  # a pipeline: take the transformed features column
        sample = model.transform(sample)
    if gmm.isSet(gmm.inputCols) and gmm.getInputCols():
        cols = [F.col(f"`{c}`").cast("double") for c in gmm.getInputCols()]
        pdf = sample.select(*cols).toPandas()
        X = pdf.to_numpy(dtype=float)
    else:
        col = gmm.getFeaturesCol()
        rows = sample.select(vector_to_array(F.col(f"`{col}`")).alias("v")).collect()
        X = np.array([r["v"] for r in rows if r["v"] is not None], dtype=float)
    return X[np.isfinite(X).all(axis=1)] if X.size else X


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plots(out: Path, model: Any, gmm: Any, df: Any) -> list[Path]:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    s = gmm.summary
    paths = []
    bayesian = hasattr(s, "effectiveK")
    history = s.lowerBoundHistory if bayesian else s.logLikelihoodHistory
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(history)), history, marker="o")
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("lower bound" if bayesian else "mean log-likelihood per row")
    ax.set_title(f"Convergence (converged={s.converged})")
    paths.append(_save(fig, out / "convergence.png"))
    if bayesian:
        order = np.argsort(gmm.weights)[::-1]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar(range(len(order)), np.asarray(gmm.weights)[order])
        ax.axhline(gmm.getEffectiveKThreshold(), color="grey", linestyle="--")
        ax.set_xticks(range(len(order)), [str(j) for j in order])
        ax.set_xlabel("component (by weight)")
        ax.set_ylabel("expected weight")
        ax.set_title(f"Effective k = {s.effectiveK} of {s.k}")
        paths.append(_save(fig, out / "weights.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(len(s.clusterSizes)), s.clusterSizes)
    ax.set_xlabel("component")
    ax.set_ylabel("rows (most likely component)")
    ax.set_title("Cluster sizes")
    paths.append(_save(fig, out / "cluster_sizes.png"))

    X = _feature_sample(model, gmm, df)
    if X.ndim != 2 or X.shape[0] < 3:
        return paths
    centre = X.mean(axis=0)
    d = X.shape[1]
    if d >= 2:
        _, _, vt = np.linalg.svd(X - centre, full_matrices=False)
        basis = vt[:2].T
    else:
        basis = np.array([[1.0]])
    Z = (X - centre) @ basis
    labels = gmm.predict(X)
    full = gmm._full_covariances()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(
        Z[:, 0],
        Z[:, 1] if Z.shape[1] > 1 else np.zeros(len(Z)),
        color=plt.cm.tab10(labels % 10),
        s=4,
        alpha=0.5,
    )
    for j, (mean, cov) in enumerate(zip(gmm.means, full)):
        m2 = (mean - centre) @ basis
        c2 = basis.T @ cov @ basis
        if c2.shape == (2, 2):
            vals, vecs = np.linalg.eigh(c2)
            angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
            w, h = 2 * 2 * np.sqrt(np.maximum(vals[::-1], 0))  # 2 standard deviations
            ax.add_patch(
                Ellipse(
                    (m2[0], m2[1]),
                    w,
                    h,
                    angle=angle,
                    fill=False,
                    lw=1.5,
                    color=plt.cm.tab10(j % 10),
                )
            )
        ax.annotate(str(j), (m2[0], m2[1] if m2.shape[0] > 1 else 0.0), weight="bold")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title("Components (2-sigma ellipses) on a sample, PCA view")
    paths.append(_save(fig, out / "components_pca.png"))
    return paths


# ---------------------------------------------------------------------------
# Model selection
# ---------------------------------------------------------------------------


def write_selection_report(
    directory: str, spark: Any, config: Any, selection: Any, seconds: float
) -> list[str]:
    """Write ``report.json``, ``selection.csv`` and ``selection.png``; return the paths."""
    import csv

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in selection.rows]
    best = selection.bestModel
    report = {
        "config": redact_config(asdict(config)),
        "criterion": selection.criterion,
        "chosen": {"k": selection.bestK, "covariance_type": selection.bestCovarianceType},
        "candidates": rows,
        "best_model": {
            "weights": best.weights,
            "means": best.means.tolist(),
            "num_iter": best.summary.numIter,
            "converged": best.summary.converged,
            "rows": best.summary.numRows,
            "skipped_rows": best.summary.numSkippedRows,
        },
        "spark": _spark_section(spark),
        "versions": _versions(),
        "wall_seconds": seconds,
    }
    paths = [out / "report.json", out / "selection.csv"]
    paths[0].write_text(json.dumps(report, indent=2, default=str))
    with paths[1].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if _can_plot("report.json and selection.csv written, plot skipped"):
        paths.append(_selection_plot(out / "selection.png", selection))
    return [str(p) for p in paths]


def _selection_plot(path: Path, selection: Any) -> Path:
    """BIC and AIC against k, one line per covariance type, the choice circled."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    types = list(dict.fromkeys(r.covarianceType for r in selection.rows))
    for ax, crit in zip(axes, ("bic", "aic")):
        for i, t in enumerate(types):
            pts = [(r.k, getattr(r, crit)) for r in selection.rows if r.covarianceType == t]
            pts = [(k, v) for k, v in pts if np.isfinite(v)]
            if pts:
                ks, vals = zip(*pts)
                ax.plot(ks, vals, marker="o", ms=4, label=t, color=plt.cm.tab10(i))
        chosen = next(r for r in selection.rows if r.chosen)
        ax.plot(
            [chosen.k],
            [getattr(chosen, crit)],
            marker="o",
            ms=14,
            mfc="none",
            mec="black",
            mew=2,
            ls="none",
            label=f"chosen (k={chosen.k}, {chosen.covarianceType})"
            if crit == selection.criterion
            else None,
        )
        ax.set_xlabel("k (components)")
        ax.set_ylabel(crit.upper() + (" (lower is better)"))
        used = " - the criterion used" if crit == selection.criterion else ""
        ax.set_title(f"{crit.upper()} by k and covariance type{used}")
        ax.legend(fontsize=8)
    return _save(fig, path)
