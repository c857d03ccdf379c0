"""A drop-in for MLlib: every public name of ``pyspark.ml.clustering``'s GaussianMixture,
GaussianMixtureModel and GaussianMixtureSummary exists on ours with the same kind and
call signature (read from the installed pyspark, so a name a future pyspark adds fails
here), and MLlib's own documented example runs unchanged."""

from __future__ import annotations

import doctest
import inspect
import re

import numpy as np
import pytest
from pyspark.ml import clustering

import spark_gmm

PAIRS = [
    (clustering.GaussianMixture, spark_gmm.GaussianMixture),
    (clustering.GaussianMixtureModel, spark_gmm.GaussianMixtureModel),
]


def _public(cls) -> list[str]:
    return sorted(n for n in dir(cls) if not n.startswith("_"))


def _kind(obj) -> str:
    if isinstance(obj, property):
        return "property"
    if callable(obj):
        return "method"
    return "attribute"


def _check_signature(name, theirs, ours) -> str | None:
    """None if every way of calling MLlib's method also calls ours."""
    try:
        their_sig, our_sig = inspect.signature(theirs), inspect.signature(ours)
    except (TypeError, ValueError):
        return None
    for p in their_sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in our_sig.parameters and not any(
            q.kind in (q.VAR_KEYWORD,) for q in our_sig.parameters.values()
        ):
            return f"{name}: MLlib's parameter {p.name!r} is not accepted"
    return None


@pytest.mark.parametrize("theirs, ours", PAIRS, ids=lambda c: c.__name__)
def test_every_public_name_exists_with_the_same_kind_and_signature(theirs, ours):
    problems = []
    for name in _public(theirs):
        if not hasattr(ours, name):
            problems.append(f"{name}: missing")
            continue
        their_attr = inspect.getattr_static(theirs, name)
        our_attr = inspect.getattr_static(ours, name)
        if isinstance(their_attr, classmethod | staticmethod):
            their_attr = getattr(theirs, name)
        if isinstance(our_attr, classmethod | staticmethod):
            our_attr = getattr(ours, name)
        if _kind(their_attr) != _kind(our_attr):
            problems.append(f"{name}: MLlib's is a {_kind(their_attr)}, ours a {_kind(our_attr)}")
        elif _kind(their_attr) == "method":
            problem = _check_signature(name, getattr(theirs, name), getattr(ours, name))
            if problem:
                problems.append(problem)
    assert not problems, "\n".join(problems)


def test_the_training_summary_has_every_name_of_mllibs(spark):
    from pyspark.ml.linalg import Vectors

    df = spark.createDataFrame(
        [(Vectors.dense([float(i % 3), float(i % 5)]),) for i in range(60)], ["features"]
    )
    model = spark_gmm.GaussianMixture(k=2, seed=1).fit(df)
    summary = model.summary
    missing = [n for n in _public(clustering.GaussianMixtureSummary) if not hasattr(summary, n)]
    assert not missing, missing
    assert summary.k == 2 and summary.numIter >= 1 and sum(summary.clusterSizes) == 60
    assert summary.featuresCol == "features"
    assert summary.cluster.columns == [summary.predictionCol] == ["prediction"]
    assert summary.probability.columns == [summary.probabilityCol] == ["probability"]
    assert summary.cluster.count() == 60
    assert isinstance(summary.logLikelihood, float)


# ---------------------------------------------------------------------------
# MLlib's documented example, unchanged
# ---------------------------------------------------------------------------

_MEAN = re.compile(r"^gaussians\[(\d)\]\.mean$")
_COV = re.compile(r"^gaussians\[(\d)\]\.cov$")


def _numbers(text: str) -> np.ndarray:
    return np.array([float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)])


def test_mllib_documented_example_runs_unchanged(spark, tmp_path):
    examples = doctest.DocTestParser().get_examples(clustering.GaussianMixture.__doc__)
    assert len(examples) > 40, "MLlib's example changed shape: update this test"
    namespace = {
        "spark": spark,
        "temp_path": str(tmp_path),
        "GaussianMixture": spark_gmm.GaussianMixture,
        "GaussianMixtureModel": spark_gmm.GaussianMixtureModel,
    }
    their_means: dict[int, np.ndarray] = {}
    their_covs: dict[int, np.ndarray] = {}
    checked = []
    for ex in examples:
        source, want = ex.source.strip(), ex.want.strip()
        if not want:
            exec(compile(source, "<mllib example>", "exec"), namespace)
            continue
        got = eval(compile(source, "<mllib example>", "eval"), namespace)
        if m := _MEAN.search(source):
            their_means[int(m.group(1))] = _numbers(want)
        elif m := _COV.search(source):
            their_covs[int(m.group(1))] = _numbers(want)
        elif want.endswith("..."):
            assert repr(got).startswith(want[:-3]), (source, repr(got))
        elif "gaussiansDF" in source or "predict" in source:
            continue  # component numbering: checked below, up to a permutation
        else:
            assert repr(got) == want, (source, repr(got), want)
        checked.append(source)
    # The components MLlib's example lists, matched to ours up to their numbering (the
    # printed values are rounded to 4 digits; ours add regCovar = 1e-6 to the diagonal).
    model = namespace["model"]
    ours = [(g.mean.toArray(), g.cov.toArray().ravel(order="F")) for g in model.gaussians]
    for i, mean in their_means.items():
        match = [j for j, (m, _) in enumerate(ours) if np.allclose(m, mean, atol=5e-4)]
        assert len(match) == 1, (i, mean, ours)
        assert np.allclose(ours[match[0]][1], their_covs[i], atol=5e-4), (i, ours[match[0]])
    # model.predict(df.head().features) names MLlib's component 2: ours is the same one.
    head = namespace["df"].head().features
    predicted = model.predict(head)
    assert np.allclose(ours[predicted][0], their_means[2], atol=5e-4)
    assert len(checked) > 25
