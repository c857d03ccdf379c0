"""Zip the ``spark_gmm`` package for ``spark-submit --py-files`` (used by ``make dist``).

    python scripts/build_pyfiles_zip.py dist/spark_gmm.zip

The archive holds ``spark_gmm/*.py`` only (no ``__pycache__``), in sorted order with a
fixed timestamp, so the same sources always give the same bytes. It is written to a
temporary sibling and renamed into place: a reader never sees a half-written zip.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "spark_gmm"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def build_pyfiles_zip(dest: str | os.PathLike[str], root: str | os.PathLike[str] = ROOT) -> Path:
    """Write ``dest`` with every ``.py`` file of ``<root>/spark_gmm``; returns its path."""
    root = Path(root)
    dest = Path(dest)
    sources = sorted((root / PACKAGE).rglob("*.py"))
    if not (root / PACKAGE / "__init__.py").is_file():
        raise FileNotFoundError(f"{root / PACKAGE / '__init__.py'} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sources:
            if "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    os.replace(tmp, dest)
    return dest


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "dist" / f"{PACKAGE}.zip")
    print(f"wrote {build_pyfiles_zip(target)}")
