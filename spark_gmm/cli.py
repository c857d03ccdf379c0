"""The ``spark-gmm`` command: ``fit``, ``select``, ``score`` and ``update`` jobs for
data-lake tables.

``jobs/fit_gmm.py``, ``jobs/select_gmm.py``, ``jobs/score_gmm.py`` and
``jobs/update_gmm.py`` (for ``spark-submit``) and the ``spark-gmm`` console script all land
in :func:`main`. Each
job reads its settings from a TOML file (``--config``) and command-line flags, flags
winning; an unknown key or a value of the wrong type is an error that names it. The
work itself is in :mod:`spark_gmm.jobs`.

Exit codes: 0 success; 2 bad configuration, input or data (one line on stderr, no stack
trace); 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TextIO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "FitConfig",
    "ScoreConfig",
    "SelectConfig",
    "UpdateConfig",
    "load_config",
    "main",
    "parse_k_values",
]

log = logging.getLogger("spark_gmm")


# As spark_gmm.gaussian.COVARIANCE_TYPES (not imported: config checks run before numpy/Spark).
_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


class ConfigError(ValueError):
    """The configuration file or flags cannot be used."""


@dataclass
class InputConfig:
    """Where the rows come from and which columns are features (fit and score)."""

    input: str = ""
    format: str = "parquet"
    table: str = ""
    where: str = ""
    csv_header: bool = True
    csv_infer_schema: bool = True
    features: list[str] = field(default_factory=list)
    features_col: str = ""
    master: str = ""
    remote: str = ""
    app_name: str = "spark_gmm"
    dry_run: bool = False


@dataclass
class TrainConfig(InputConfig):
    """Settings shared by the jobs that fit (``fit``, ``select``). Estimator settings left
    unset keep the estimator's defaults."""

    weight_col: str = ""
    standardize: bool = False
    max_iter: int | None = None
    tol: float | None = None
    reg_covar: float | None = None
    init: str | None = None
    n_init: int | None = None
    seed: int | None = None
    handle_invalid: str | None = None
    handle_missing: str | None = None
    output: str = ""
    overwrite: bool = False
    report: str = ""
    checkpoint_dir: str = ""
    checkpoint_interval: int | None = None
    resume: bool = False
    cache_storage_level: str | None = None
    block_dtype: str | None = None
    max_block_size_mb: float | None = None


@dataclass
class FitConfig(TrainConfig):
    """Settings of ``spark-gmm fit``. ``model = "bayesian"`` fits a
    BayesianGaussianMixture (``k`` is then an upper bound)."""

    k: int | None = None
    covariance_type: str | None = None
    model: str = "gmm"
    weight_concentration_prior_type: str | None = None
    weight_concentration_prior: float | None = None
    effective_k_threshold: float | None = None
    merge_components: bool | None = None


@dataclass
class SelectConfig(TrainConfig):
    """Settings of ``spark-gmm select``: a grid of k and covariance types, best by BIC/AIC.

    ``k`` is a range ``"1..10"``, a list ``"2,4,8"`` / ``[2, 4, 8]`` or one number.
    """

    k: Any = "1..10"
    covariance_types: list[str] = field(
        default_factory=lambda: ["full", "tied", "diag", "spherical"]
    )
    criterion: str = "bic"


@dataclass
class ScoreConfig(InputConfig):
    """Settings of ``spark-gmm score``."""

    model: str = ""
    id_cols: list[str] = field(default_factory=list)
    output: str = ""
    output_table: str = ""
    output_format: str = "parquet"
    partition_by: list[str] = field(default_factory=list)
    mode: str = "error"
    anomaly_quantile: float | None = None
    handle_invalid: str = "error"
    handle_missing: str | None = None
    imputed_col: str = ""


@dataclass
class UpdateConfig(InputConfig):
    """Settings of ``spark-gmm update``: fold new rows (e.g. one day's partition) into a
    saved model and save the result elsewhere (see ``GaussianMixtureModel.update``)."""

    model: str = ""
    output: str = ""
    overwrite: bool = False
    weight_col: str = ""
    decay_factor: float | None = None
    half_life: float | None = None
    time_unit: str = "batches"
    step_size_offset: float | None = None
    step_size_exponent: float | None = None
    passes: int = 1
    initial_weight: float | None = None
    handle_invalid: str | None = None


_LIST_KEYS = {"features", "id_cols", "partition_by", "covariance_types"}
_TYPES: dict[str, type] = {
    "k": int,
    "max_iter": int,
    "n_init": int,
    "seed": int,
    "tol": float,
    "reg_covar": float,
    "anomaly_quantile": float,
    "covariance_type": str,
    "init": str,
    "handle_invalid": str,
    "handle_missing": str,
    "criterion": str,
    "checkpoint_interval": int,
    "cache_storage_level": str,
    "weight_concentration_prior_type": str,
    "weight_concentration_prior": float,
    "effective_k_threshold": float,
    "merge_components": bool,
    "block_dtype": str,
    "max_block_size_mb": float,
    "decay_factor": float,
    "half_life": float,
    "step_size_offset": float,
    "step_size_exponent": float,
    "passes": int,
    "initial_weight": float,
}


def parse_k_values(value: Any) -> list[int]:
    """``"1..10"``, ``"2,4,8"``, ``[2, 4, 8]`` or ``3`` -> sorted distinct k values.

    Raises
    ------
    ConfigError
        Not a range or list of integers >= 1, or an empty range (kMin > kMax).
    """
    hint = "write k as a range like 1..10, a list like 2,4,8, or one number"
    if isinstance(value, int) and not isinstance(value, bool):
        values = [value]
    elif isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        values = list(value)
    elif isinstance(value, str) and ".." in value:
        lo, _, hi = value.partition("..")
        try:
            k_min, k_max = int(lo), int(hi)
        except ValueError:
            raise ConfigError(f"config key 'k': {value!r} is not a range; {hint}.") from None
        if k_min > k_max:
            raise ConfigError(
                f"config key 'k': the range {value} is empty (kMin {k_min} > kMax {k_max}); "
                f"write it as {k_max}..{k_min}."
            )
        values = list(range(k_min, k_max + 1))
    elif isinstance(value, str):
        try:
            values = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(
                f"config key 'k': {value!r} is not a list of numbers; {hint}."
            ) from None
    else:
        raise ConfigError(
            f"config key 'k' must be a range or list of numbers; got {value!r}; {hint}."
        )
    if not values:
        raise ConfigError(f"config key 'k' is empty; {hint}.")
    if min(values) < 1:
        raise ConfigError(f"config key 'k': every k must be >= 1; got {min(values)}.")
    return sorted(set(values))


def _coerce(name: str, value: Any, default: Any, cls: type) -> Any:
    """Check/convert one config value to the field's type; raise naming the key."""
    if name == "k" and cls is SelectConfig:
        return parse_k_values(value)
    if name in _LIST_KEYS:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"config key '{name}' must be a list of column names; got {value!r}.")
        return value
    expected = _TYPES.get(name, type(default))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"config key '{name}' must be of type {expected.__name__}; got {value!r}."
        )
    return value


def load_config(cls: type, path: str | None, overrides: dict[str, Any]) -> Any:
    """Merge a TOML file and command-line overrides into a config dataclass.

    Parameters
    ----------
    cls : FitConfig or ScoreConfig
    path : str or None
        TOML file; its keys are the dataclass fields.
    overrides : dict
        Flag values; None means "not given".
    """
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
    defaults = cls()
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"unknown config key '{key}' for {cls.__name__}; known keys: "
                f"{', '.join(sorted(known))}."
            )
    config = cls(**{k: _coerce(k, v, getattr(defaults, k), cls) for k, v in values.items()})
    if bool(config.input) == bool(config.table):
        raise ConfigError("give exactly one of 'input' (a path) or 'table' (a catalog table).")
    if config.features and config.features_col:
        raise ConfigError("give only one of 'features' and 'features_col'.")
    if isinstance(config, SelectConfig):
        config.k = parse_k_values(config.k)
        unknown = [t for t in config.covariance_types if t not in _COVARIANCE_TYPES]
        if unknown or not config.covariance_types:
            raise ConfigError(
                "config key 'covariance_types': unknown "
                f"{', '.join(map(repr, unknown)) or '(empty list)'}; use any of "
                f"{', '.join(_COVARIANCE_TYPES)}."
            )
        if config.criterion not in ("bic", "aic"):
            raise ConfigError(f"'criterion' must be bic or aic; got {config.criterion!r}.")
    if isinstance(config, FitConfig) and config.model not in ("gmm", "bayesian"):
        raise ConfigError(f"'model' must be gmm or bayesian; got {config.model!r}.")
    if isinstance(config, TrainConfig) and config.resume and not config.checkpoint_dir:
        raise ConfigError("'resume' needs 'checkpoint_dir' (where the checkpoint is).")
    if isinstance(config, TrainConfig) and not (config.features or config.features_col):
        raise ConfigError(
            "give 'features' (numeric columns) or 'features_col' (a vector column) to fit."
        )
    if isinstance(config, UpdateConfig):
        if not config.model:
            raise ConfigError("'model' (the saved model to update) is required.")
        if not config.output and not config.dry_run:
            raise ConfigError("'output' (where the updated model goes) is required.")
        if config.passes < 1:
            raise ConfigError(f"'passes' must be >= 1; got {config.passes}.")
    if isinstance(config, ScoreConfig):
        if not config.model:
            raise ConfigError("'model' (the saved model directory) is required to score.")
        if bool(config.output) == bool(config.output_table) and not config.dry_run:
            raise ConfigError("give exactly one of 'output' (a path) or 'output_table'.")
        if config.mode not in ("error", "overwrite", "append"):
            raise ConfigError(f"'mode' must be error, overwrite or append; got {config.mode!r}.")
        q = config.anomaly_quantile
        if q is not None and not 0.0 < q < 1.0:
            raise ConfigError(f"'anomaly_quantile' must be between 0 and 1; got {q}.")
    return config


def _input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with any of these settings (flags win)")
    p.add_argument("--input", help="input path (with --format)")
    p.add_argument("--format", help="parquet (default), orc, csv, json, or any Spark source")
    p.add_argument("--table", help="catalog table, e.g. db.events, instead of --input")
    p.add_argument("--where", help="SQL predicate applied to the input (partition pruning)")
    p.add_argument("--features", help="comma-separated numeric feature columns")
    p.add_argument("--features-col", dest="features_col", help="a vector or array column")
    p.add_argument("--master", help="Spark master when not run by spark-submit")
    p.add_argument(
        "--remote",
        help="Spark Connect server, sc://host:port (default: $SPARK_REMOTE); the job then "
        "runs as a Connect client, without a local JVM",
    )
    p.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_const",
        const=True,
        help="check config, input and columns, print the plan, do nothing",
    )


def _training_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the jobs that fit (fit, select): how the training rows are used."""
    p.add_argument("--weight-col", dest="weight_col")
    p.add_argument(
        "--standardize",
        action="store_const",
        const=True,
        help="scale features (StandardScaler), saved with the model",
    )


def _estimator_flags(p: argparse.ArgumentParser, output_help: str, report_help: str) -> None:
    """Estimator settings, outputs and checkpoints of the jobs that fit (fit, select)."""
    p.add_argument("--max-iter", dest="max_iter", type=int)
    p.add_argument("--tol", type=float)
    p.add_argument("--reg-covar", dest="reg_covar", type=float)
    p.add_argument("--init")
    p.add_argument("--n-init", dest="n_init", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--handle-invalid", dest="handle_invalid")
    p.add_argument(
        "--handle-missing",
        dest="handle_missing",
        help="null/NaN features: invalid (default: they follow --handle-invalid) or "
        "marginalize (EM over each row's observed features)",
    )
    p.add_argument("--output", help=output_help)
    p.add_argument(
        "--overwrite", action="store_const", const=True, help="replace an existing model directory"
    )
    p.add_argument("--report", help=report_help)
    p.add_argument(
        "--cache-storage-level",
        dest="cache_storage_level",
        help="where the input blocks stay between EM passes: MEMORY_AND_DISK (default), "
        "DISK_ONLY, MEMORY_ONLY, ..., or NONE (re-read the input every pass)",
    )
    p.add_argument(
        "--block-dtype",
        dest="block_dtype",
        help="float64 (default) or float32 (half the cache; statistics stay float64)",
    )
    p.add_argument(
        "--max-block-size-mb",
        dest="max_block_size_mb",
        type=float,
        help="MiB of features per cached block (default 0: automatic, 0.25)",
    )
    _checkpoint_flags(p)


def _checkpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint-dir",
        dest="checkpoint_dir",
        help="local/mounted directory for the EM state (saved atomically)",
    )
    p.add_argument(
        "--checkpoint-interval",
        dest="checkpoint_interval",
        type=int,
        help="save the EM state every N iterations (default 10)",
    )
    p.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue from the checkpoint in --checkpoint-dir (refused for other input "
        "or settings; starts from scratch when there is none)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-gmm", description="Gaussian-mixture clustering jobs on Spark."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a model and save it")
    _input_flags(fit)
    _training_flags(fit)
    fit.add_argument("--k", type=int, help="components (with --model bayesian: at most)")
    fit.add_argument("--covariance-type", dest="covariance_type")
    fit.add_argument(
        "--model",
        help="gmm (default: maximum likelihood) or bayesian (a Dirichlet-process prior "
        "empties the components the data do not need)",
    )
    fit.add_argument(
        "--weight-concentration-prior-type",
        dest="weight_concentration_prior_type",
        help="bayesian: dirichlet_process (default) or dirichlet_distribution",
    )
    fit.add_argument(
        "--weight-concentration-prior",
        dest="weight_concentration_prior",
        type=float,
        help="bayesian: smaller favours fewer components (default 1/k)",
    )
    fit.add_argument(
        "--effective-k-threshold",
        dest="effective_k_threshold",
        type=float,
        help="bayesian: weight above which a component counts (default 0.01)",
    )
    fit.add_argument(
        "--no-merge-components",
        dest="merge_components",
        action="store_const",
        const=False,
        help="bayesian: no merge moves (sklearn's iterations exactly)",
    )
    _estimator_flags(fit, "model directory to write", "directory for report.json and plots")
    select = sub.add_parser(
        "select", help="fit a grid of k and covariance types, save the best by BIC/AIC"
    )
    _input_flags(select)
    _training_flags(select)
    select.add_argument("--k", help="k values: a range 1..10 or a list 2,4,8 (default 1..10)")
    select.add_argument(
        "--covariance-types",
        dest="covariance_types",
        help="comma-separated, any of full,tied,diag,spherical (default: all four)",
    )
    select.add_argument("--criterion", help="bic (default) or aic; the lowest wins")
    _estimator_flags(
        select,
        "directory for the best model",
        "directory for report.json, selection.csv and plots",
    )
    update = sub.add_parser(
        "update", help="fold new rows into a saved model (online EM), save it elsewhere"
    )
    _input_flags(update)
    update.add_argument("--model", help="the model directory to start from")
    update.add_argument("--output", help="where the updated model goes (not --model)")
    update.add_argument(
        "--overwrite", action="store_const", const=True, help="replace an existing output"
    )
    update.add_argument("--weight-col", dest="weight_col")
    update.add_argument(
        "--decay-factor",
        dest="decay_factor",
        type=float,
        help="forgetting: weight the past keeps per batch (or per row), default 1",
    )
    update.add_argument(
        "--half-life", dest="half_life", type=float, help="forgetting: in batches or rows"
    )
    update.add_argument("--time-unit", dest="time_unit", help="batches (default) or points")
    update.add_argument(
        "--step-size-offset",
        dest="step_size_offset",
        type=float,
        help="stepwise EM: step (t + offset) ** -exponent at update t",
    )
    update.add_argument("--step-size-exponent", dest="step_size_exponent", type=float)
    update.add_argument("--passes", type=int, help="E-steps over the new rows (default 1)")
    update.add_argument(
        "--initial-weight",
        dest="initial_weight",
        type=float,
        help="rows a never-updated model counts for (default: its training rows)",
    )
    update.add_argument("--handle-invalid", dest="handle_invalid")
    score = sub.add_parser("score", help="apply a saved model to a table")
    _input_flags(score)
    score.add_argument("--model", help="model directory written by 'fit'")
    score.add_argument("--id-cols", dest="id_cols", help="columns carried to the output")
    score.add_argument("--output", help="output path")
    score.add_argument("--output-table", dest="output_table", help="output catalog table")
    score.add_argument("--output-format", dest="output_format")
    score.add_argument("--partition-by", dest="partition_by", help="comma-separated columns")
    score.add_argument("--mode", help="error (default), overwrite or append")
    score.add_argument(
        "--anomaly-quantile",
        dest="anomaly_quantile",
        type=float,
        help="flag rows less likely than this quantile of the training rows",
    )
    score.add_argument(
        "--handle-invalid",
        dest="handle_invalid",
        help="error (default), skip or keep (null outputs)",
    )
    score.add_argument(
        "--handle-missing",
        dest="handle_missing",
        help="null/NaN features: invalid or marginalize (default: the model's setting)",
    )
    score.add_argument(
        "--imputed-col",
        dest="imputed_col",
        help="also write this column: the features with missing values filled by their "
        "conditional expectation under the model (needs marginalize)",
    )
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler bound to whatever ``sys.stderr`` is when a record is emitted.

    Notebooks and test runners swap ``sys.stderr``; a handler holding the stream of the
    first ``main`` call would later write to a closed file.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _log_to_stderr() -> None:
    """Progress lines (one per EM iteration) on stderr, where spark-submit shows them.

    A handler on our own logger: ``logging.basicConfig`` is a no-op when something (e.g.
    py4j under spark-submit) has configured the root logger first.
    """
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spark-gmm fit|select|score``; returns the process exit code."""
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    config_path = args.pop("config")
    _log_to_stderr()
    if args.get("remote") and not args.get("master"):
        args["master"] = ""  # --remote wins over a master set in the config file
    try:
        config_cls = {
            "fit": FitConfig,
            "select": SelectConfig,
            "score": ScoreConfig,
            "update": UpdateConfig,
        }[command]
        config = load_config(config_cls, config_path, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from spark_gmm import jobs
    from spark_gmm.errors import GaussianMixtureError, short_error
    from spark_gmm.session import build_session, connect_url

    try:
        connect_url(config.remote or None, config.master or None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spark = build_session(
        f"{config.app_name} {command}",
        master=config.master or None,
        remote=config.remote or None,
    )
    try:
        if command == "fit":
            jobs.run_fit(spark, config)
        elif command == "select":
            jobs.run_select(spark, config)
        elif command == "update":
            jobs.run_update(spark, config)
        else:
            jobs.run_score(spark, config)
        return 0
    except (GaussianMixtureError, jobs.JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {short_error(exc)}", file=sys.stderr)
        log.debug("job failed", exc_info=True)
        return 2 if jobs.is_user_error(exc) else 1
    finally:
        spark.stop()


def fit_main() -> int:
    """Entry of ``jobs/fit_gmm.py``."""
    return main(["fit", *sys.argv[1:]])


def select_main() -> int:
    """Entry of ``jobs/select_gmm.py``."""
    return main(["select", *sys.argv[1:]])


def update_main() -> int:
    """Entry of ``jobs/update_gmm.py``."""
    return main(["update", *sys.argv[1:]])


def score_main() -> int:
    """Entry of ``jobs/score_gmm.py``."""
    return main(["score", *sys.argv[1:]])
