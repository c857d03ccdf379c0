"""``transform`` through both UDF paths (Arrow UDF on Spark >= 4.1, pandas UDF before):
the same outputs, equal to the numpy model's, with ``handleInvalid`` respected."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

from spark_gmm import GaussianMixtureModel, scoring
from spark_gmm.errors import InvalidInputError

MODEL = GaussianMixtureModel.fromParameters(
    [0.2, 0.5, 0.3],
    [[0.0, 0.0, 0.0], [3.0, 1.0, -1.0], [-2.0, 4.0, 0.5]],
    np.array([np.eye(3) * 0.5, np.diag([1.0, 2.0, 0.5]), np.eye(3)]),
    "full",
)


def _rows(n=2500, seed=0):
    X, _labels = MODEL.sample(n, seed=seed)
    return X, None


@pytest.mark.parametrize("source", ["columns", "vector"])
def test_outputs_equal_the_numpy_model_with_invalid_rows_kept(spark, udf_path, source):
    X, _ = _rows()
    bad = {7: "nan", 11: "null", 1500: "inf"}
    records = []
    for i, row in enumerate(X):
        values = [float(v) for v in row]
        if bad.get(i) == "nan":
            values[1] = float("nan")
        elif bad.get(i) == "inf":
            values[2] = float("inf")
        if source == "columns":
            if bad.get(i) == "null":
                values[0] = None
            records.append((i, *values))
        else:
            vector = None if bad.get(i) == "null" else Vectors.dense(values)
            records.append((i, vector))
    if source == "columns":
        df = spark.createDataFrame(records, "id long, a double, b double, c double")
        model = MODEL.copy().setInputCols(["a", "b", "c"])
    else:
        df = spark.createDataFrame(records, ["id", "features"])
        model = MODEL.copy()
    out = (
        model.setHandleInvalid("keep")
        .setLogLikelihoodCol("ll")
        .transform(df.repartition(3))
        .orderBy("id")
        .collect()
    )
    assert len(out) == len(X)
    ok = np.array([i not in bad for i in range(len(X))])
    for i in bad:
        assert out[i]["prediction"] is None and out[i]["probability"] is None
        assert out[i]["ll"] is None
    proba = np.array([r["probability"].toArray() for r, good in zip(out, ok) if good])
    expected = MODEL.predict_proba(X[ok])
    np.testing.assert_allclose(proba, expected, rtol=1e-12, atol=1e-300)
    assert [r["prediction"] for r, good in zip(out, ok) if good] == list(expected.argmax(1))
    np.testing.assert_allclose(
        [r["ll"] for r, good in zip(out, ok) if good], MODEL.score_samples(X[ok]), rtol=1e-12
    )
    # skip drops exactly those rows; error names the problem.
    skipped = model.setHandleInvalid("skip").transform(df)
    assert skipped.count() == len(X) - len(bad)
    with pytest.raises(Exception, match="null, NaN, infinite or wrongly sized"):
        model.setHandleInvalid("error").transform(df).collect()


def test_score_arrays_builds_flat_buffers_and_null_children():
    import pyarrow as pa

    from spark_gmm.data import make_spec

    X, _ = _rows(50)
    spec = make_spec("columns", ["a", "b", "c"], 3, None)
    arrays = [pa.array(X[:, j]) for j in range(3)]
    arrays[0] = pa.array([None if i == 3 else v for i, v in enumerate(X[:, 0])], pa.float64())
    out = scoring.score_arrays(arrays, spec, MODEL.mixtureParameters, "keep")
    assert out.type == pa.struct(scoring._OUTPUT_FIELDS)
    proba = out.field("probability")
    # One flat values buffer of rows x k, with evenly spaced offsets.
    assert len(proba.values) == 50 * 3
    assert proba.offsets.to_pylist() == list(range(0, 151, 3))
    assert proba.null_count == 1 and not proba.is_valid()[3].as_py()
    with pytest.raises(InvalidInputError, match="1 row"):
        scoring.score_arrays(arrays, spec, MODEL.mixtureParameters, "error")


def test_dense_vectors_wrap_the_flat_buffer_as_vector_udt_values():
    import pyarrow as pa
    from pyspark.ml.linalg import DenseVector, VectorUDT

    lists = pa.ListArray.from_arrays(
        pa.array([0, 2, 4, 6], pa.int32()),
        pa.array([0.25, 0.75, 1.0, 0.0, 0.5, 0.5]),
        mask=pa.array([False, True, False]),
    )
    out = scoring.dense_vectors(lists)
    # The same Python values VectorUDT serialises a DenseVector to, row by row.
    udt = VectorUDT()
    expected = [
        udt.serialize(DenseVector([0.25, 0.75])),
        None,
        udt.serialize(DenseVector([0.5, 0.5])),
    ]
    assert [None if r is None else tuple(r.values()) for r in out.to_pylist()] == [
        None if e is None else tuple(e) for e in expected
    ]
    assert out.field("values").values.to_pylist() == lists.values.to_pylist()


@pytest.mark.parametrize("source", ["columns", "vector"])
def test_transform_of_a_parquet_table_with_a_vector_column(spark, udf_path, source, tmp_path):
    """The usual scheduled flow: a Parquet table (here holding an ml Vector column, as
    VectorAssembler's output saved) read and scored. On Spark 4.3 the scan feeds Arrow
    UDFs columnar batches by default, and that path refuses any VectorUDT in the rows."""
    X, _ = _rows(300, seed=3)
    records = [
        (i, Vectors.dense([float(v) for v in row]), *map(float, row)) for i, row in enumerate(X)
    ]
    table = str(tmp_path / "table")
    spark.createDataFrame(records, ["id", "features", "a", "b", "c"]).write.parquet(table)
    model = MODEL.copy().setLogLikelihoodCol("ll")
    if source == "columns":
        model.setInputCols(["a", "b", "c"])
    out = model.transform(spark.read.parquet(table)).orderBy("id").collect()
    np.testing.assert_allclose(
        [r["probability"].toArray() for r in out], MODEL.predict_proba(X), rtol=1e-12, atol=1e-300
    )
    np.testing.assert_allclose([r["ll"] for r in out], MODEL.score_samples(X), rtol=1e-12)
    assert [r["features"] for r in out] == [r[1] for r in records]
