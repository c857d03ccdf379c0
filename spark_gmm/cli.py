"""Command-line entry for the fit job: config file + flags → read → fit → write → summary.

``jobs/fit_gmm.py`` (for ``spark-submit``) and the ``spark-gmm-fit`` console script both
call :func:`fit_main`. Settings come from a TOML file (``--config``) and command-line
flags, flags winning; an unknown key in the file is an error that names it.

Exit codes: 0 success, 2 bad configuration or input (one line on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["FitConfig", "fit_main", "load_config"]

log = logging.getLogger("spark_gmm")


class ConfigError(ValueError):
    """The configuration file or flags cannot be used."""


@dataclass
class FitConfig:
    """Settings of the fit job; every field is a key of the TOML file."""

    input: str = ""
    format: str = "parquet"
    table: str = ""
    features: list[str] = field(default_factory=list)
    features_col: str = ""
    weight_col: str = ""
    k: int = 2
    covariance_type: str = "full"
    max_iter: int = 100
    tol: float = 1e-3
    reg_covar: float = 1e-6
    init: str = "kmeans"
    n_init: int = 1
    seed: int | None = None
    handle_invalid: str = "error"
    id_cols: list[str] = field(default_factory=list)
    predictions: str = ""
    summary_json: str = ""
    master: str = ""
    app_name: str = "spark_gmm fit"


_LIST_KEYS = {"features", "id_cols"}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check/convert a config value to the type of the field's default."""
    if name in _LIST_KEYS:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"config key '{name}' must be a list of column names; got {value!r}.")
        return value
    if name == "seed":
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ConfigError(f"config key 'seed' must be an integer; got {value!r}.")
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"config key '{name}' must be of type {expected.__name__}; got {value!r}."
        )
    return value


def load_config(path: str | None, overrides: dict[str, Any]) -> FitConfig:
    """Merge a TOML file and command-line overrides into a :class:`FitConfig`."""
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}.") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    defaults = FitConfig()
    known = {f.name for f in fields(FitConfig)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"unknown config key '{key}'; known keys: {', '.join(sorted(known))}."
            )
    config = FitConfig(**{k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()})
    if bool(config.input) == bool(config.table):
        raise ConfigError("give exactly one of 'input' (a path) or 'table' (a catalog table).")
    if bool(config.features) == bool(config.features_col):
        raise ConfigError(
            "give exactly one of 'features' (columns) or 'features_col' (a vector column)."
        )
    return config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spark-gmm-fit", description="Fit a Gaussian mixture on a table with Spark."
    )
    p.add_argument("--config", help="TOML file with any of the settings below")
    p.add_argument("--input", help="input path (with --format)")
    p.add_argument("--format", help="input format: parquet, orc, csv, json, ...")
    p.add_argument("--table", help="catalog table name instead of --input")
    p.add_argument("--features", help="comma-separated numeric feature columns")
    p.add_argument("--features-col", dest="features_col", help="a vector/array column")
    p.add_argument("--weight-col", dest="weight_col")
    p.add_argument("--k", type=int)
    p.add_argument("--covariance-type", dest="covariance_type")
    p.add_argument("--max-iter", dest="max_iter", type=int)
    p.add_argument("--tol", type=float)
    p.add_argument("--reg-covar", dest="reg_covar", type=float)
    p.add_argument("--init")
    p.add_argument("--n-init", dest="n_init", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--handle-invalid", dest="handle_invalid")
    p.add_argument("--id-cols", dest="id_cols", help="columns copied to the predictions")
    p.add_argument("--predictions", help="write scored rows (Parquet) to this path")
    p.add_argument("--summary-json", dest="summary_json", help="write the fit summary here")
    p.add_argument("--master", help="Spark master when not run by spark-submit")
    return p


def _read(spark: Any, config: FitConfig) -> Any:
    if config.table:
        return spark.table(config.table)
    reader = spark.read.format(config.format)
    if config.format == "csv":
        reader = reader.option("header", "true").option("inferSchema", "true")
    return reader.load(config.input)


def _summary_text(model: Any, seconds: float) -> str:
    s = model.summary
    lines = [
        f"spark_gmm fit: k={s.k}, covariance={model.getCovarianceType()}, rows={s.numRows} "
        f"(skipped {s.numSkippedRows}), iterations={s.numIter}, converged={s.converged}, "
        f"{seconds:.1f} s",
        f"mean log-likelihood {s.meanLogLikelihood:.6f}   BIC {s.bic:.1f}   AIC {s.aic:.1f}",
        "",
        f"{'component':>9} {'weight':>8} {'rows':>8}  mean",
    ]
    for j, (w, size, mean) in enumerate(zip(model.weights, s.clusterSizes, model.means)):
        lines.append(f"{j:>9} {w:>8.4f} {size:>8d}  [{', '.join(f'{v:.3f}' for v in mean)}]")
    return "\n".join(lines)


def fit_main(argv: Sequence[str] | None = None) -> int:
    """Run the fit job; returns the process exit code."""
    args = vars(_parser().parse_args(argv))
    config_path = args.pop("config")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(config_path, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from spark_gmm import GaussianMixture, InvalidInputError
    from spark_gmm.errors import short_error
    from spark_gmm.session import build_session

    spark = build_session(config.app_name, master=config.master or None)
    started = time.perf_counter()
    try:
        df = _read(spark, config)
        estimator = GaussianMixture(
            k=config.k,
            covarianceType=config.covariance_type,
            maxIter=config.max_iter,
            tol=config.tol,
            regCovar=config.reg_covar,
            initMode=config.init,
            nInit=config.n_init,
            handleInvalid=config.handle_invalid,
            logLikelihoodCol="log_likelihood",
        )
        if config.seed is not None:
            estimator.setSeed(config.seed)
        if config.features:
            estimator.setInputCols(config.features)
        else:
            estimator.setFeaturesCol(config.features_col)
        if config.weight_col:
            estimator.setWeightCol(config.weight_col)
        model = estimator.fit(df)
        seconds = time.perf_counter() - started
        print(_summary_text(model, seconds))
        if config.predictions:
            keep = config.id_cols + ["prediction", "probability", "log_likelihood"]
            model.transform(df).select(*keep).write.mode("overwrite").parquet(config.predictions)
            print(f"\npredictions: {Path(config.predictions).resolve()}")
        if config.summary_json:
            s = model.summary
            payload = {
                "k": s.k,
                "covariance_type": model.getCovarianceType(),
                "num_rows": s.numRows,
                "num_skipped_rows": s.numSkippedRows,
                "num_iter": s.numIter,
                "converged": s.converged,
                "mean_log_likelihood": s.meanLogLikelihood,
                "log_likelihood_history": s.logLikelihoodHistory,
                "iteration_seconds": s.iterationSeconds,
                "bic": s.bic,
                "aic": s.aic,
                "weights": model.weights,
                "means": model.means.tolist(),
                "cluster_sizes": s.clusterSizes,
                "seconds": seconds,
            }
            Path(config.summary_json).parent.mkdir(parents=True, exist_ok=True)
            Path(config.summary_json).write_text(json.dumps(payload, indent=2))
            print(f"summary:     {Path(config.summary_json).resolve()}")
        return 0
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # AnalysisException (missing path/table) and the like
        print(f"error: {type(exc).__name__}: {short_error(exc)}", file=sys.stderr)
        log.debug("fit failed", exc_info=True)
        return 1
    finally:
        spark.stop()
