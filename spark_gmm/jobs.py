"""The fit, select and score jobs: read → fit or transform → write, for ``spark-gmm``/``jobs/``.

Transforms take and return DataFrames; the only side effects are the writes at the end
(model directory, scored output, report), each complete or absent.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import numpy as np

from spark_gmm.errors import GaussianMixtureError

__all__ = ["JobError", "is_user_error", "run_fit", "run_score", "run_select", "run_update"]

log = logging.getLogger("spark_gmm")

# Quantiles of the training log-likelihood saved with a model, for --anomaly-quantile.
QUANTILE_GRID = [round(q, 4) for q in np.linspace(0.001, 0.999, 999)]
_SCALED_COL = "features_standardized"
_ASSEMBLED_COL = "features_assembled"


class JobError(GaussianMixtureError):
    """A job cannot run as configured (bad paths, would overwrite its input, ...)."""


def is_user_error(exc: BaseException) -> bool:
    """Errors caused by the job's input or config (exit 2), not by a bug (exit 1)."""
    names = {type(exc).__name__} | {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"AnalysisException", "ParseException", "IllegalArgumentException"})


# ---------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------


def _missing_filesystem(text: str) -> str:
    """What Hadoop says when a path's scheme has no FileSystem class on the classpath."""
    match = re.search(r"No FileSystem for scheme \"?([\w.+-]+)\"?", text)
    if match:
        return f"no Hadoop FileSystem for the scheme '{match.group(1)}'"
    match = re.search(r"Class (org\.apache\.hadoop\.[\w.]+FileSystem) not found", text)
    if match:
        return f"the Hadoop FileSystem class {match.group(1)} is not on the classpath"
    return ""


def read_input(spark: Any, config: Any) -> Any:
    """The input DataFrame: a catalog table or a path in any Spark format, filtered."""
    missing = JobError(
        f"input path {config.input} does not exist. Check 'input' (--input) and 'format'."
    )
    # Checked before the read: Spark's reader logs a Java stack trace for a missing path
    # before it fails. Glob patterns and paths the check cannot look at (e.g. a scheme
    # without its connector) are left to the reader.
    if not config.table and not any(c in config.input for c in "*?[{"):
        try:
            found = _exists(spark, config.input)
        except Exception:
            found = True
        if not found:
            raise missing
    try:
        if config.table:
            df = spark.table(config.table)
        else:
            reader = spark.read.format(config.format)
            if config.format == "csv":
                reader = reader.option("header", str(config.csv_header).lower()).option(
                    "inferSchema", str(config.csv_infer_schema).lower()
                )
            df = reader.load(config.input)
        df.schema  # noqa: B018 - resolves the source now (Spark Connect is lazy)
    except Exception as exc:
        text = str(exc)
        if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
            raise missing from None
        connector = _missing_filesystem(text)
        if connector:
            raise JobError(
                f"cannot read {config.input}: {connector}. Add the connector's jars to the job "
                "(e.g. spark-submit --packages org.apache.hadoop:hadoop-aws:<Spark's Hadoop "
                "version> for s3a://), or copy the input to a file system Spark can read."
            ) from None
        if "TABLE_OR_VIEW_NOT_FOUND" in text:
            raise JobError(
                f"input table {config.table} does not exist. Check 'table' (--table, e.g. "
                "db.events) and the catalog (a Hive metastore needs "
                "spark.sql.catalogImplementation=hive)."
            ) from None
        raise
    if config.where:
        df = df.where(config.where)
    return df


def check_feature_types(df: Any, names: list[str]) -> None:
    """Refuse text feature columns with a message saying which values are not numbers.

    A CSV read with ``inferSchema`` turns a column holding one malformed number into a
    string column: name the column, count its non-numeric values and show one.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in df.schema.fields}
    text = [c for c in names if isinstance(fields.get(c), T.StringType)]
    if not text:
        return
    aggs = []
    for j, c in enumerate(text):
        col = F.col(f"`{c}`")
        bad = col.isNotNull() & F.expr(f"try_cast(`{c}` AS DOUBLE)").isNull()
        aggs += [F.count(F.when(bad, 1)).alias(f"n{j}"), F.min(F.when(bad, col)).alias(f"e{j}")]
        aggs.append(F.count(col).alias(f"v{j}"))
    row = df.agg(F.count(F.lit(1)).alias("rows"), *aggs).collect()[0]
    # A CSV column with no value at all is read as string too.
    empty = [c for j, c in enumerate(text) if not row[f"v{j}"]]
    if empty:
        raise JobError(
            f"feature column(s) {', '.join(repr(c) for c in empty)}: null in all "
            f"{row['rows']} rows, so there is nothing to fit or score them on. Drop them "
            "from the features."
        )
    malformed = [
        f"'{c}' ({int(row[f'n{j}'])} value(s), e.g. {row[f'e{j}']!r})"
        for j, c in enumerate(text)
        if row[f"n{j}"]
    ]
    if malformed:
        raise JobError(
            f"feature column(s) read as text because some values are not numbers: "
            f"{', '.join(malformed)}. Fix or filter those rows ('where'); a CSV column with "
            "any malformed number is read as string."
        )
    raise JobError(
        f"feature column(s) {', '.join(repr(c) for c in text)} are text (string) although "
        "their values are numbers: read the CSV with csv_infer_schema = true, or store "
        "them as numbers."
    )


def _worker_error(exc: BaseException) -> GaussianMixtureError | None:
    """The spark_gmm error raised inside a Python worker, from Spark's wrapped exception."""
    marker = "spark_gmm.errors.InvalidInputError: "
    for line in str(exc).splitlines():
        if marker in line:
            from spark_gmm.errors import InvalidInputError

            return InvalidInputError(line.split(marker, 1)[1].strip())
    return None


def _same_location(a: str, b: str) -> bool:
    """True when two paths name the same directory or one contains the other."""
    import os.path
    from urllib.parse import urlparse

    def norm(p: str) -> str:
        if urlparse(p).scheme in ("", "file"):
            return os.path.abspath(urlparse(p).path).rstrip("/")
        return p.rstrip("/")

    x, y = norm(a), norm(b)
    return x == y or x.startswith(y + "/") or y.startswith(x + "/")


def _check_not_input(config: Any, output_path: str = "", output_table: str = "") -> None:
    report = getattr(config, "report", "")
    if report and config.input and _same_location(report, config.input):
        raise JobError(
            f"refusing to write the report to {report}: it is (inside) the job's input "
            f"{config.input}. Choose another report directory."
        )
    if output_path and config.input and _same_location(output_path, config.input):
        raise JobError(
            f"refusing to write {output_path}: it is (inside) the job's input {config.input}. "
            "Choose another output path."
        )
    if output_table and config.table and output_table.lower() == config.table.lower():
        raise JobError(
            f"refusing to write table {output_table}: it is the job's input. "
            "Choose another output table."
        )


# ---------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------


def build_fit_pipeline(config: Any) -> tuple[Any, Any]:
    """The estimator to fit (a Pipeline when --standardize) and its mixture stage: a
    GaussianMixture, or a BayesianGaussianMixture with ``model = "bayesian"``."""
    from spark_gmm import BayesianGaussianMixture, GaussianMixture

    if config.model == "bayesian":
        gm: Any = BayesianGaussianMixture(logLikelihoodCol="log_likelihood")
        extra = {
            "weightConcentrationPriorType": config.weight_concentration_prior_type,
            "weightConcentrationPrior": config.weight_concentration_prior,
            "effectiveKThreshold": config.effective_k_threshold,
            "mergeComponents": config.merge_components,
        }
    else:
        gm = GaussianMixture(logLikelihoodCol="log_likelihood")
        extra = {}
    _set_estimator_params(gm, config, k=config.k, covarianceType=config.covariance_type, **extra)
    return _with_feature_stages(config, gm), gm


def build_select_pipeline(config: Any) -> tuple[Any, Any]:
    """The estimator to fit (a Pipeline when --standardize) and its selector stage."""
    from spark_gmm.selection import GaussianMixtureSelector

    selector = GaussianMixtureSelector(
        kValues=config.k,
        covarianceTypes=config.covariance_types,
        criterion=config.criterion,
        logLikelihoodCol="log_likelihood",
    )
    _set_estimator_params(selector, config)
    return _with_feature_stages(config, selector), selector


def _set_estimator_params(estimator: Any, config: Any, **extra: Any) -> None:
    """The job's estimator settings; those left unset keep the estimator's defaults."""
    settings = {
        **extra,
        "maxIter": config.max_iter,
        "tol": config.tol,
        "regCovar": config.reg_covar,
        "initMode": config.init,
        "nInit": config.n_init,
        "seed": config.seed,
        "handleInvalid": config.handle_invalid,
        "handleMissing": config.handle_missing,
        "checkpointDir": config.checkpoint_dir or None,
        "checkpointInterval": config.checkpoint_interval,
        "resumeFromCheckpoint": True if config.resume else None,
        "cacheStorageLevel": config.cache_storage_level,
        "blockDtype": config.block_dtype,
        "maxBlockSizeInMB": config.max_block_size_mb,
    }
    estimator.setParams(**{k: v for k, v in settings.items() if v is not None})


def _with_feature_stages(config: Any, final: Any) -> Any:
    """``final`` reading the configured features: itself, or a Pipeline that assembles
    and standardises them first (--standardize)."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    if config.weight_col:
        final.setWeightCol(config.weight_col)
    if not config.standardize:
        if config.features:
            final.setInputCols(config.features)
        else:
            final.setFeaturesCol(config.features_col)
        return final
    if getattr(config, "handle_missing", None) == "marginalize":
        raise JobError(
            "standardize cannot be combined with handle_missing = marginalize: Spark's "
            "StandardScaler does not skip missing values, so every mean and deviation "
            "would be NaN. Standardise the columns before the job, or drop standardize."
        )
    stages: list[Any] = []
    source = config.features_col
    if config.features:
        # 'keep' turns nulls into NaN so that the mixture's own validation counts them.
        stages.append(
            VectorAssembler(
                inputCols=config.features, outputCol=_ASSEMBLED_COL, handleInvalid="keep"
            )
        )
        source = _ASSEMBLED_COL
    stages.append(
        StandardScaler(inputCol=source, outputCol=_SCALED_COL, withMean=True, withStd=True)
    )
    final.setFeaturesCol(_SCALED_COL)
    stages.append(final)
    return Pipeline(stages=stages)


def _plan(config: Any, df: Any, what: str) -> str:
    source = config.table or f"{config.input} ({config.format})"
    features = ", ".join(config.features) if config.features else config.features_col
    lines = [
        f"plan: {what}",
        f"  input:    {source}" + (f" where {config.where}" if config.where else ""),
    ]
    lines.append(f"  features: {features or '(from the model)'}")
    lines.append(f"  schema:   {df.schema.simpleString()[:500]}")
    return "\n".join(lines)


def _check_model_output(spark: Any, config: Any) -> None:
    """Before reading anything: the model directory may be written (fit, select)."""
    _check_not_input(config, output_path=config.output)
    if config.output and not config.overwrite and _exists(spark, config.output):
        raise JobError(
            f"model directory {config.output} already exists; set overwrite = true "
            "(--overwrite) to replace it, or choose another output."
        )


def _check_training_columns(df: Any, config: Any) -> None:
    """Schema checks before any Spark job (also when --standardize puts a pipeline first)."""
    from spark_gmm.data import resolve_features

    check_feature_types(df, config.features)
    resolve_features(
        df,
        config.features or None,
        config.features_col or "features",
        config.weight_col or None,
    )


def _save_model(spark: Any, config: Any, model: Any) -> None:
    """Save the fitted model (or pipeline) atomically to ``config.output``, if given."""
    from spark_gmm.persistence import atomic_save

    if config.output:
        atomic_save(
            spark, config.output, lambda p: model.write().save(p), overwrite=config.overwrite
        )
        print(f"model:  {config.output}")


def _print_report_paths(paths: list[str]) -> None:
    print(f"report: {paths[0]}")
    for extra in paths[1:]:
        print(f"        {extra}")


def run_fit(spark: Any, config: Any) -> Any:
    """Fit, save the model (atomically), write the report; returns the fitted model."""

    started = time.perf_counter()
    _check_model_output(spark, config)
    df = read_input(spark, config)
    estimator, gm = build_fit_pipeline(config)
    gm._validate_params()
    _check_training_columns(df, config)
    if config.dry_run:
        print(_plan(config, df, f"fit k={gm.getK()} {gm.getCovarianceType()}"))
        print(f"  output:   {config.output or '(not saved)'}")
        return None
    model = estimator.fit(df)
    fitted = model.stages[-1] if estimator is not gm else model  # a PipelineModel ends with it
    fitted.logLikelihoodQuantiles = _log_likelihood_quantiles(model, df)
    seconds = time.perf_counter() - started
    print(summary_text(fitted, seconds))
    _save_model(spark, config, model)
    if config.report:
        from spark_gmm.report import write_fit_report

        paths = write_fit_report(config.report, spark, config, model, fitted, df, seconds)
        _print_report_paths(paths)
    log.info("fit job done in %.1f s", time.perf_counter() - started)
    return model


def run_select(spark: Any, config: Any) -> Any:
    """Fit the grid, save the best model (atomically), write the selection report.

    Returns the fitted selection (a :class:`GaussianMixtureSelectionModel`, or a
    PipelineModel ending with one under --standardize).
    """
    from pyspark.ml import PipelineModel

    started = time.perf_counter()
    _check_model_output(spark, config)
    df = read_input(spark, config)
    estimator, selector = build_select_pipeline(config)
    grid = selector._grid()
    _check_training_columns(df, config)
    if config.dry_run:
        ks = ",".join(map(str, config.k))
        print(
            _plan(
                config,
                df,
                f"select by {config.criterion.upper()} over k={ks} x "
                f"{','.join(config.covariance_types)} ({len(grid)} candidates)",
            )
        )
        print(f"  output:   {config.output or '(not saved)'}")
        return None
    fitted = estimator.fit(df)
    selection = fitted.stages[-1] if estimator is not selector else fitted
    best = selection.bestModel
    # What is saved and scored: the best mixture, behind the same feature stages.
    model = PipelineModel(fitted.stages[:-1] + [best]) if estimator is not selector else best
    best.logLikelihoodQuantiles = _log_likelihood_quantiles(model, df)
    seconds = time.perf_counter() - started
    print(selection_text(selection, seconds))
    _save_model(spark, config, model)
    if config.report:
        from spark_gmm.report import write_selection_report

        paths = write_selection_report(config.report, spark, config, selection, seconds)
        _print_report_paths(paths)
    log.info("select job done in %.1f s", time.perf_counter() - started)
    return fitted


def selection_text(selection: Any, seconds: float) -> str:
    """The selection table as text, the choice marked with '*'."""
    crit = selection.criterion
    lines = [
        f"spark_gmm select: {len(selection.rows)} candidates, best by {crit.upper()}: "
        f"k={selection.bestK} {selection.bestCovarianceType}, {seconds:.1f} s",
        "",
        f"  {'k':>3} {'covariance':<10} {'params':>7} {'mean loglik':>12} {'BIC':>12} "
        f"{'AIC':>12} {'iter':>5} {'conv':>5} {'cpu s':>7}",
    ]
    for r in selection.rows:
        mark = "*" if r.chosen else " "
        if r.error is not None:
            lines.append(f"{mark} {r.k:>3} {r.covarianceType:<10} failed: {r.error}")
            continue
        lines.append(
            f"{mark} {r.k:>3} {r.covarianceType:<10} {r.numParameters:>7} "
            f"{r.meanLogLikelihood:>12.5f} {r.bic:>12.1f} {r.aic:>12.1f} {r.numIter:>5} "
            f"{r.converged!s:>5} {r.seconds:>7.2f}"
        )
    return "\n".join(lines)


def _log_likelihood_quantiles(model: Any, df: Any) -> list[list[float]]:
    """Quantiles of the training rows' log-likelihood (one pass, approxQuantile)."""
    scored = model.transform(df).where("log_likelihood IS NOT NULL")
    values = scored.approxQuantile("log_likelihood", QUANTILE_GRID, 1e-4)
    return [[q, float(v)] for q, v in zip(QUANTILE_GRID, values)]


def summary_text(model: Any, seconds: float) -> str:
    s = model.summary
    bayesian = hasattr(s, "effectiveK")
    lines = [
        f"spark_gmm fit: k={s.k}, covariance={model.getCovarianceType()}, rows={s.numRows} "
        f"(skipped {s.numSkippedRows}), iterations={s.numIter}, converged={s.converged}, "
        f"{seconds:.1f} s",
        f"Bayesian mixture: effective k {s.effectiveK} of {s.k} (weight > "
        f"{model.getEffectiveKThreshold()}), lower bound {s.lowerBound:.6g}"
        if bayesian
        else f"mean log-likelihood {s.meanLogLikelihood:.6f}   BIC {s.bic:.1f}   AIC {s.aic:.1f}",
        "",
        f"{'component':>9} {'weight':>8} {'rows':>8}  mean",
    ]
    rows = list(enumerate(zip(model.weights, s.clusterSizes, model.means)))
    if bayesian:  # the weights sorted: the components the prior emptied come last
        rows.sort(key=lambda row: -row[1][0])
    for j, (w, size, mean) in rows:
        lines.append(f"{j:>9} {w:>8.4f} {size:>8d}  [{', '.join(f'{v:.3f}' for v in mean)}]")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Score
# ---------------------------------------------------------------------------


def anomaly_threshold(quantiles: list[list[float]] | None, q: float) -> float:
    """The training log-likelihood at quantile ``q`` (linear between saved quantiles)."""
    if not quantiles:
        raise JobError(
            "this model has no training log-likelihood quantiles (it was not saved by "
            "'spark-gmm fit'); refit it with the fit job to use anomaly_quantile."
        )
    qs = np.array([p[0] for p in quantiles])
    values = np.array([p[1] for p in quantiles])
    if not qs[0] <= q <= qs[-1]:
        raise JobError(f"anomaly_quantile must be within [{qs[0]}, {qs[-1]}]; got {q}.")
    return float(np.interp(q, qs, values))


def score_frame(model: Any, gm: Any, df: Any, config: Any) -> Any:
    """Input rows → id columns + prediction, probability (array), log_likelihood[, is_anomaly]."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    gm.setLogLikelihoodCol("log_likelihood").setHandleInvalid(config.handle_invalid)
    if config.handle_missing:
        gm.setHandleMissing(config.handle_missing)
    if config.imputed_col:
        if gm.getHandleMissing() != "marginalize":
            raise JobError(
                "imputed_col needs handle_missing = marginalize (--handle-missing "
                "marginalize): with 'invalid', rows with missing features are not scored."
            )
        gm.setImputedCol(config.imputed_col)
    if model is gm:
        if config.features:
            gm.setInputCols(config.features)
        elif config.features_col:
            gm.setFeaturesCol(config.features_col)
    scored = model.transform(df)
    keep = list(dict.fromkeys(config.id_cols + config.partition_by))
    missing = [c for c in keep if c not in df.columns]
    if missing:
        raise JobError(f"id/partition columns not in the input: {', '.join(missing)}.")
    columns = [F.col(f"`{c}`") for c in keep] + [
        F.col("prediction"),
        vector_to_array(F.col("probability")).alias("probability"),
        F.col("log_likelihood"),
    ]
    if config.imputed_col:
        columns.append(vector_to_array(F.col(config.imputed_col)).alias(config.imputed_col))
    if config.anomaly_quantile is not None:
        threshold = anomaly_threshold(gm.logLikelihoodQuantiles, config.anomaly_quantile)
        columns.append((F.col("log_likelihood") < F.lit(threshold)).alias("is_anomaly"))
    return scored.select(*columns)


def run_score(spark: Any, config: Any) -> None:
    """Load a model, score the input, write the output (refusing to overwrite the input)."""
    from spark_gmm.persistence import load_any_model

    started = time.perf_counter()
    _check_not_input(config, output_path=config.output, output_table=config.output_table)
    existed = bool(config.output) and _exists(spark, config.output)
    if config.mode == "error" and not config.dry_run:
        if existed:
            raise JobError(
                f"output {config.output} already exists; use mode overwrite or append "
                "(--mode), or choose another output."
            )
        if config.output_table and spark.catalog.tableExists(config.output_table):
            raise JobError(
                f"output table {config.output_table} already exists; use mode overwrite or "
                "append (--mode), or choose another output table."
            )
    model, gm = load_any_model(config.model, spark)
    df = read_input(spark, config)
    check_feature_types(df, config.features or _model_input_cols(model, gm))
    out = score_frame(model, gm, df, config)
    if config.dry_run:
        print(_plan(config, df, f"score with {config.model} (k={gm.getK()})"))
        print(f"  output:   {config.output or config.output_table} ({config.mode})")
        print(f"  columns:  {', '.join(out.columns)}")
        return
    if df.isEmpty():
        where = f" after where {config.where!r}" if config.where else ""
        raise JobError(
            f"the input {config.table or config.input} has no rows{where}: nothing to score. "
            "Check the input path, table or filter."
        )
    try:
        target = _write_scores(spark, out, config)
    except Exception as exc:
        if not existed and config.output and _exists(spark, config.output):
            _delete(spark, config.output)  # a failed write leaves no empty output behind
        worker = _worker_error(exc)
        if worker is not None:
            raise worker from None
        raise
    print(
        f"scored rows written to {target} ({config.output_format}, mode={config.mode}) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    log.info("score job done: %s", json.dumps({"output": target, "mode": config.mode}))


def run_update(spark: Any, config: Any) -> Any:
    """Fold the input rows into the saved model, save the result at ``config.output``.

    The output must differ from the model: a rerun for the same rows then starts from the
    same model and writes the same result (idempotent), where updating in place would
    fold the rows in twice. A pipeline model (``--standardize``) keeps its feature stages;
    only its mixture is updated.
    """
    from pyspark.ml import PipelineModel

    from spark_gmm.bayesian import BayesianGaussianMixtureModel
    from spark_gmm.persistence import load_any_model

    started = time.perf_counter()
    if config.output and _same_location(config.model, config.output):
        raise JobError(
            f"output {config.output} is the model being updated: write the update elsewhere "
            "(e.g. one directory per day), so that a rerun starts from the same model "
            "instead of folding the same rows in twice."
        )
    _check_model_output(spark, config)
    model, gm = load_any_model(config.model, spark)
    if isinstance(gm, BayesianGaussianMixtureModel):
        raise JobError(
            f"{config.model} holds a BayesianGaussianMixtureModel, which cannot be updated "
            "incrementally; refit it on the new window."
        )
    df = read_input(spark, config)
    if config.features:
        gm.setInputCols(config.features)
    elif config.features_col:
        gm.setFeaturesCol(config.features_col)
    if config.weight_col:
        gm.set(gm.weightCol, config.weight_col)
    if config.handle_invalid:
        gm.setHandleInvalid(config.handle_invalid)
    check_feature_types(df, config.features or _model_input_cols(model, gm))
    if config.dry_run:
        print(_plan(config, df, f"update {config.model} (k={gm.getK()})"))
        print(f"  output:   {config.output or '(not saved)'}")
        return None
    rows = df
    if model is not gm:  # the pipeline's feature stages first
        for stage in model.stages[:-1]:
            rows = stage.transform(rows)
    try:
        updated = gm.update(
            rows,
            decayFactor=config.decay_factor,
            halfLife=config.half_life,
            timeUnit=config.time_unit,
            stepSizeOffset=config.step_size_offset,
            stepSizeExponent=config.step_size_exponent,
            passes=config.passes,
            initialWeight=config.initial_weight,
        )
    except Exception as exc:
        worker = _worker_error(exc)
        if worker is not None:
            raise worker from None
        raise
    result = updated if model is gm else PipelineModel(stages=[*model.stages[:-1], updated])
    schedule = updated.updateSchedule or {}
    print(
        f"spark_gmm update {updated.updateCount}: {schedule.get('batchRows')} new rows "
        f"(mean log-likelihood {schedule.get('batchMeanLogLikelihood', float('nan')):.6f} "
        f"under the previous model), {updated.updateRows} rows folded in so far, "
        f"{schedule.get('kind')} schedule, {time.perf_counter() - started:.1f} s"
    )
    print("weights: " + ", ".join(f"{w:.4f}" for w in updated.weights))
    _save_model(spark, config, result)
    log.info("update job done in %.1f s", time.perf_counter() - started)
    return result


def _model_input_cols(model: Any, gm: Any) -> list[str]:
    """The columns a saved model reads: its inputCols, or its pipeline's first stage's."""
    first = model.stages[0] if model is not gm and model.stages else gm
    if first.hasParam("inputCols") and first.isDefined(first.getParam("inputCols")):
        return list(first.getOrDefault(first.getParam("inputCols")) or [])
    return []


def _exists(spark: Any, path: str) -> bool:
    from spark_gmm.persistence import path_exists

    return bool(path) and path_exists(spark, path)


def _delete(spark: Any, path: str) -> None:
    from spark_gmm.persistence import delete_path

    delete_path(spark, path)


def _in_table_order(spark: Any, out: Any, table: str) -> Any:
    """``out``'s columns in ``table``'s order: ``insertInto`` matches by position, and a
    partitioned table keeps its partition columns last."""
    from pyspark.sql import functions as F

    existing = spark.table(table).columns
    ours = {c.lower(): c for c in out.columns}
    if sorted(ours) != sorted(c.lower() for c in existing):
        raise JobError(
            f"output table {table} has the columns {', '.join(existing)}; this run writes "
            f"{', '.join(out.columns)}. Use the settings that created it (id_cols, "
            "anomaly_quantile, imputed_col), or another output table."
        )
    return out.select(*[F.col(f"`{ours[c.lower()]}`") for c in existing])


def _write_scores(spark: Any, out: Any, config: Any) -> str:
    """Write the scored rows; a plain path output appears complete or not at all."""
    from spark_gmm.persistence import atomic_save

    if config.output and not config.partition_by and config.mode in ("error", "overwrite"):
        # Into a sibling temporary directory renamed into place: a failure leaves the
        # old output (or none) untouched.
        atomic_save(
            spark,
            config.output,
            lambda p: out.write.mode(config.mode).format(config.output_format).save(p),
            overwrite=config.mode == "overwrite",
        )
        return str(config.output)
    writer = out.write.mode(config.mode)
    if config.partition_by:
        # Overwrite replaces only the partitions this run writes.
        writer = writer.partitionBy(*config.partition_by).option(
            "partitionOverwriteMode", "dynamic"
        )
    if config.output_table:
        if (
            config.mode == "overwrite"
            and config.partition_by
            and spark.catalog.tableExists(config.output_table)
        ):
            # insertInto ignores the writer's partitionOverwriteMode option: only the
            # session setting makes it replace just the partitions written.
            from spark_gmm.engine import session_conf

            rows = _in_table_order(spark, out, config.output_table)
            dynamic = {"spark.sql.sources.partitionOverwriteMode": "dynamic"}
            with session_conf(spark, dynamic):
                rows.write.insertInto(config.output_table, overwrite=True)
        else:
            writer.format(config.output_format).saveAsTable(config.output_table)
        return str(config.output_table)
    writer.format(config.output_format).save(config.output)
    return str(config.output)
