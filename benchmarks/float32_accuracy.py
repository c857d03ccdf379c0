"""What the float32 compute path (``blockDtype="float32"``, diag and spherical) costs in
accuracy: EM from the same start on the same float32-rounded rows, with float64 blocks
and with float32 blocks, compared after 10 iterations (no timing).

Rows: embedding-like (``tests/test_wide.py``'s generator: 1,500 x 256, k=16 fitted),
standardised and in raw units (x 1e2 + 1e3). Reported per case: the mean
log-likelihood's relative difference, and the largest relative difference of the means
and of the variances (floors: 1e-3 of the data's scale and of its square). Results:
``benchmarks/results/float32_accuracy.{json,md}``.

Usage::

    .venv/bin/python benchmarks/float32_accuracy.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import timing
from helpers import rel_err
from test_wide import _em, _embedding_like, _start

from spark_gmm.gaussian import MixtureParameters

RESULTS = Path(__file__).resolve().parent / "results"
ITERATIONS = 10


def main() -> None:
    wide = _embedding_like(3000, 256, 64, seed=3)
    rows = []
    for covariance_type in ("diag", "spherical"):
        for standardised in (True, False):
            X = wide[:1500] if standardised else wide[:1500] * 1e2 + 1e3
            X = X.astype(np.float32).astype(np.float64)  # the rows both paths see
            start = _start(X, 16, covariance_type)
            params0 = MixtureParameters.from_precisions(
                start.weights_, start.means_, start.precisions_, covariance_type
            )
            p64, h64 = _em(X, params0, ITERATIONS)
            p32, h32 = _em(X, params0, ITERATIONS, dtype=np.float32)
            scale = 1.0 if standardised else 1e2
            rows.append(
                {
                    "covariance_type": covariance_type,
                    "units": "standardised" if standardised else "raw (x 1e2 + 1e3)",
                    "mean_log_likelihood_float64": h64[-1],
                    "log_likelihood_rel": abs(h32[-1] - h64[-1]) / abs(h64[-1]),
                    "means_rel": rel_err(p32.means, p64.means, floor=1e-3 * scale),
                    "variances_rel": rel_err(
                        p32.covariances, p64.covariances, floor=1e-3 * scale**2
                    ),
                }
            )
    payload = {"machine": timing.machine(), "iterations": ITERATIONS, "cases": rows}
    timing.write_json(RESULTS / "float32_accuracy.json", payload)
    (RESULTS / "float32_accuracy.md").write_text(render(payload))
    print(render(payload))


def render(p: dict[str, Any]) -> str:
    m = p["machine"]
    lines = [
        "# float32 compute path: accuracy against float64 from the same start",
        "",
        timing.provenance_line(m)
        + f". {p['iterations']} EM iterations, 1,500 x 256 embedding-like "
        "rows, k=16, the same float32-rounded rows for both; relative differences of "
        "float32 blocks against float64 blocks (floors: 1e-3 of the data's scale).",
        "",
        "| covariance | units | mean log-lik. (float64) | log-lik. | means | variances |",
        "|---|---|---|---|---|---|",
    ]
    for r in p["cases"]:
        lines.append(
            f"| {r['covariance_type']} | {r['units']} | {r['mean_log_likelihood_float64']:.4f} "
            f"| {r['log_likelihood_rel']:.1e} | {r['means_rel']:.1e} | {r['variances_rel']:.1e} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
