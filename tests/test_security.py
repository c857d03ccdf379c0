"""Security (issue 6): nothing from a model directory or a config file is unpickled,
evaluated or run; no shell; credentials never reach a report."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.feature import VectorAssembler

import spark_gmm
from spark_gmm import GaussianMixtureModel
from spark_gmm.cli import ConfigError, FitConfig, load_config
from spark_gmm.persistence import ModelFormatError, load_any_model
from spark_gmm.report import redact_conf, redact_config

PACKAGE = Path(spark_gmm.__file__).parent

# Calls that deserialise code or run a shell: none may appear in the package.
FORBIDDEN = {
    "pickle.load": r"\bc?pickle\.loads?\(",
    "cloudpickle.load": r"\bcloudpickle\.loads?\(",
    "marshal.load": r"\bmarshal\.loads?\(",
    "shelve": r"\bimport shelve\b",
    "eval(": r"(?<![\w.])eval\(",
    "exec(": r"(?<![\w.])exec\(",
    "compile(": r"(?<![\w.])compile\(",
    "__import__(": r"__import__\(",
    "importlib.import_module": r"import_module\(",
    "shell=True": r"shell\s*=\s*True",
    "os.system": r"\bos\.system\(",
    "os.popen": r"\bos\.popen\(",
    "subprocess": r"\bsubprocess\b",
    "yaml.load": r"\byaml\.(unsafe_)?load\(",
}


class _Boom:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


def test_package_source_has_no_unpickling_eval_or_shell():
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) >= 10, sources
    found = []
    for path in sources:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            found += [
                f"{path.name}:{lineno}: {name}"
                for name, pattern in FORBIDDEN.items()
                if re.search(pattern, code)
            ]
    assert not found, found


def test_the_patterns_do_catch_what_they_look_for():
    """The scan above is only as good as its patterns: check each one fires."""
    samples = {
        "pickle.load": "x = pickle.loads(data)",
        "eval(": "value = eval(text)",
        "exec(": "exec(code)",
        "shell=True": "run(cmd, shell = True)",
        "os.system": "os.system(cmd)",
        "subprocess": "import subprocess",
        "yaml.load": "yaml.unsafe_load(f)",
    }
    for name, sample in samples.items():
        assert re.search(FORBIDDEN[name], sample), name
    assert not re.search(FORBIDDEN["eval("], "model.evaluate(df)")


def test_config_is_toml_and_values_are_never_evaluated(tmp_path):
    from spark_gmm import cli

    assert cli.tomllib.__name__ in ("tomllib", "tomli")
    marker = tmp_path / "evaluated"
    conf = tmp_path / "c.toml"
    conf.write_text(
        'input = "in"\nfeatures = ["a"]\n'
        f"k = \"__import__('pathlib').Path('{marker}').write_text('x')\"\n"
    )
    with pytest.raises(ConfigError, match="'k' must be of type int"):
        load_config(FitConfig, str(conf), {})
    # A path with shell syntax is kept verbatim, as a path.
    conf.write_text(f'input = "in; touch {marker}"\nfeatures = ["a"]\n')
    assert load_config(FitConfig, str(conf), {}).input == f"in; touch {marker}"
    assert not marker.exists()


def test_a_path_with_shell_syntax_is_only_a_path(spark, tmp_path, monkeypatch, capsys):
    import spark_gmm.session
    from spark_gmm.cli import main

    monkeypatch.setattr(spark_gmm.session, "build_session", lambda *a, **k: spark)
    monkeypatch.setattr(spark, "stop", lambda: None)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    assert main(["fit", "--input", f"x; touch {marker}", "--features", "a"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not marker.exists()


@pytest.fixture
def saved_model(tmp_path):
    model = GaussianMixtureModel.fromParameters(
        [0.4, 0.6], [[0.0, 0.0], [3.0, 3.0]], np.ones((2, 2)), "diag"
    )
    path = tmp_path / "model"
    model.write().save(str(path))
    return model, path


def test_pickle_files_in_a_model_directory_are_never_loaded(spark, tmp_path, saved_model):
    model, path = saved_model
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(marker))
    # Extra pickles beside the real files are ignored ...
    (path / "model.pkl").write_bytes(payload)
    (path / "data" / "_extra.pkl").write_bytes(payload)
    loaded, gm = load_any_model(str(path), spark)
    assert loaded is gm and np.allclose(gm.means, model.means)
    # ... and a data directory holding a pickle instead of Parquet is refused, not run.
    for f in (path / "data").iterdir():
        f.unlink()
    (path / "data" / "part-00000.parquet").write_bytes(payload)
    with pytest.raises(ModelFormatError, match="data cannot be read"):
        GaussianMixtureModel.load(str(path))
    assert not marker.exists()


def test_pipeline_stage_naming_an_arbitrary_class_is_refused(
    spark, tmp_path, saved_model, monkeypatch
):
    model, _ = saved_model
    marker = tmp_path / "imported"
    # A module that leaves a marker when imported, importable from sys.path.
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "evil_stage_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "class Evil:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(modules))
    pipeline = PipelineModel(
        stages=[VectorAssembler(inputCols=["a", "b"], outputCol="features"), model]
    )
    path = tmp_path / "pipeline"
    pipeline.write().save(str(path))
    assert load_any_model(str(path), spark)[1].numFeatures == 2  # a trusted pipeline loads
    stage_meta = next((path / "stages").glob("0_*")) / "metadata"
    for crc in stage_meta.glob(".*.crc"):
        crc.unlink()
    part = next(p for p in stage_meta.iterdir() if p.name.startswith("part-"))
    text = part.read_text()
    assert "org.apache.spark.ml.feature.VectorAssembler" in text
    part.write_text(
        text.replace("org.apache.spark.ml.feature.VectorAssembler", "evil_stage_mod.Evil")
    )
    with pytest.raises(ModelFormatError, match=r"names the class 'evil_stage_mod\.Evil'"):
        load_any_model(str(path), spark)
    assert not marker.exists()


def test_report_redacts_credentials():
    conf = redact_conf(
        [
            ("spark.hadoop.fs.s3a.secret.key", "S3CR3T"),
            ("spark.hadoop.fs.s3a.access.key", "AKIA"),
            ("spark.ssl.keyPassword", "pw1"),
            ("spark.authenticate.secret", "pw2"),
            ("spark.my.Token", "tok"),
            ("spark.jdbc.PASSWORD", "pw3"),
            ("spark.executor.memory", "2g"),
            ("spark.app.name", "job"),
        ]
    )
    assert conf["spark.executor.memory"] == "2g" and conf["spark.app.name"] == "job"
    redacted = {k for k, v in conf.items() if v == "*****(redacted)"}
    assert redacted == set(conf) - {"spark.executor.memory", "spark.app.name"}
    config = redact_config(
        {
            "input": "s3a://AKIA:S3CR3T@bucket/events",
            "features": ["a", "b"],
            "output": "hdfs:///models/m",
            "k": 3,
        }
    )
    assert config["input"] == "s3a://*****@bucket/events"
    assert config["features"] == ["a", "b"] and config["output"] == "hdfs:///models/m"
    assert config["k"] == 3
