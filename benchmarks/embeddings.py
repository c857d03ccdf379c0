"""An embedding-like table: rows near k cluster centres on a low-dimensional curved
manifold in d dimensions, plus per-cluster, per-feature noise; written as Parquet with
one ``array<float>`` column ``embedding``, as embedding tables are stored.

Usage::

    .venv/bin/python benchmarks/embeddings.py OUT.parquet --rows 1000000 --d 768 --k 256
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LATENT = 16  # dimension of the manifold the centres lie on


def _model(d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, centres (k, d), noise scales (k, d)) of the table's clusters."""
    rng = np.random.default_rng(seed)
    # Centres: a smooth nonlinear image of k latent points, so the clusters are not
    # spread isotropically in d dimensions but lie along a LATENT-dimensional surface.
    z = rng.normal(size=(k, LATENT))
    lift = rng.normal(size=(LATENT, d)) / np.sqrt(LATENT)
    centres = np.tanh(z @ lift) + 0.1 * (z @ lift)
    weights = rng.dirichlet(np.full(k, 2.0))
    scales = rng.uniform(0.1, 0.3, size=(k, 1)) * rng.uniform(0.7, 1.3, size=(k, d))
    return weights, centres, scales


def rows(n: int, d: int, k: int, seed: int, start: int = 0) -> np.ndarray:
    """Rows ``start .. start + n`` of the table, float32, (n, d); the same rows whatever
    the chunking (each chunk's generator is seeded by its position)."""
    weights, centres, scales = _model(d, k, seed)
    rng = np.random.default_rng([seed, start])
    labels = rng.choice(k, size=n, p=weights)
    noise = rng.standard_normal((n, d), dtype=np.float32)
    noise *= scales[labels].astype(np.float32)
    noise += centres[labels].astype(np.float32)
    return noise


def write_table(path: Path, n: int, d: int, k: int, seed: int = 0, chunk: int = 50_000) -> Path:
    """Write the table in row groups of ``chunk`` rows; skip if it exists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    schema = pa.schema([("embedding", pa.list_(pa.float32()))])
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, n, chunk):
            block = rows(min(chunk, n - start), d, k, seed, start)
            offsets = pa.array(np.arange(0, block.size + 1, d, dtype=np.int32))
            column = pa.ListArray.from_arrays(offsets, pa.array(block.ravel()))
            writer.write_table(pa.table({"embedding": column}, schema=schema))
    tmp.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_table(args.out, args.rows, args.d, args.k, args.seed)


if __name__ == "__main__":
    main()
