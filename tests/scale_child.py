"""Child process of tests/test_scale.py: fit and score with a small driver heap.

Usage: scale_child.py INPUT_DIR START_JSON OUTPUT_DIR [storage level]

The heap is set by the parent (``PYSPARK_SUBMIT_ARGS``), before the JVM starts. Prints
one JSON line with the fitted parameters, then writes the scored rows to OUTPUT_DIR.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import numpy as np
from pyspark.sql import SparkSession

from spark_gmm import GaussianMixture, GaussianMixtureModel


def main() -> None:
    source, start_path, output = sys.argv[1:4]
    level = sys.argv[4] if len(sys.argv) > 4 else "MEMORY_AND_DISK"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("spark_gmm").setLevel(logging.INFO)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    heap = spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()
    with open(start_path) as fh:
        start = json.load(fh)
    initial = GaussianMixtureModel.fromParameters(
        start["weights"], start["means"], start["covariances"], "diag"
    )
    df = spark.read.parquet(source)
    gm = GaussianMixture(
        k=len(start["weights"]),
        inputCols=df.columns,
        covarianceType="diag",
        initialModel=initial,
        maxIter=3,
        tol=0.0,
        cacheStorageLevel=level,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0: EM never "converges"
        model = gm.fit(df)
    print(
        json.dumps(
            {
                "heap_bytes": heap,
                "weights": model.weights,
                "means": np.asarray(model.means).tolist(),
                "covariances": np.asarray(model.covariances).tolist(),
                "rows": model.summary.numRows,
            }
        ),
        flush=True,
    )
    model.setLogLikelihoodCol("loglik").transform(df).select("prediction", "loglik").write.parquet(
        output
    )
    spark.stop()


if __name__ == "__main__":
    main()
