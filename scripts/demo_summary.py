"""Last step of `make demo`: a short table of the scored sample and where the outputs are."""

import sys
from pathlib import Path

import pandas as pd


def main(scored_dir: str, report_dir: str) -> None:
    scored = pd.read_parquet(scored_dir)
    table = pd.crosstab(scored["true_label"], scored["prediction"])
    table.index.name = "true cluster"
    table.columns.name = "predicted component"
    print("\nRows by true cluster (shipped labels) and predicted component:")
    print(table.to_string())
    if "is_anomaly" in scored:
        print(
            f"\nFlagged as anomalies (below the training 1% log-likelihood quantile): "
            f"{int(scored['is_anomaly'].sum())} of {len(scored)} rows"
        )
    print(f"\nscored rows: {Path(scored_dir).resolve()}")
    for png in sorted(Path(report_dir).glob("*")):
        print(f"report:      {png.resolve()}")
    print(
        "\nTry next (first: source .venv/bin/activate):\n"
        "  spark-gmm score --config conf/demo-score.toml --output out/demo/scored-again"
        "     # score rows with the saved model\n"
        "  spark-gmm select --config conf/demo-select.toml"
        "     # which k and covariance type BIC picks\n"
        f"  python -m json.tool {report_dir}/report.json"
        "     # the fit's report (plots: *.png beside it)"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
