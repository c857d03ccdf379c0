"""EM checkpoints: the state of every candidate, written atomically, to resume a killed fit.

A checkpoint is one JSON file, ``<checkpointDir>/em_state.json``, rewritten every
``checkpointInterval`` EM iterations by write-to-temporary + ``os.replace`` (atomic on a
POSIX file system: a reader sees the previous or the new state, never half of one). It
holds, for every candidate (each ``nInit`` start, each cell of a selection grid): the
weights, means, covariances and precision Cholesky factors, the log-likelihood history,
iterations, converged/failed; plus the pass times, the fit's settings and a fingerprint of
the input (rows, total weight, an order-independent sum of the rows' content hashes).

Floats are written with ``repr`` (shortest round-trip form), so a resumed fit continues
from bit-identical parameters and ends with the same model as an uninterrupted one. JSON
only: nothing is unpickled or evaluated on load.

A checkpoint is refused on resume when the input fingerprint or any setting that changes
the EM trajectory differs (``maxIter`` may differ: resuming with a larger one continues a
fit that stopped at its cap).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import MixtureParameters

__all__ = ["FORMAT_VERSION", "CheckpointMismatchError", "Checkpointer", "local_checkpoint_dir"]

log = logging.getLogger("spark_gmm")

FORMAT_VERSION = 1
_FILE = "em_state.json"


class CheckpointMismatchError(InvalidInputError):
    """The checkpoint was written by a fit of other data or other settings."""


def local_checkpoint_dir(path: str) -> Path:
    """``path`` as a local directory, or an error for remote URIs (hdfs://, s3a://...)."""
    parsed = urlparse(path)
    if parsed.scheme not in ("", "file"):
        raise InvalidInputError(
            f"checkpointDir {path!r}: only local or mounted paths are supported (the driver "
            "writes the checkpoint); use a directory on a disk or network mount the driver "
            "can reach after a restart."
        )
    return Path(parsed.path if parsed.scheme == "file" else path)


_VARIATIONAL_ARRAYS = (
    "weight_concentration",
    "mean_precision",
    "means",
    "degrees_of_freedom",
    "covariances",
    "precisions_chol",
)


def _params_to_json(p: Any) -> dict[str, Any]:
    if not isinstance(p, MixtureParameters):  # the variational posterior
        return {
            "kind": "variational",
            "covariance_type": p.covariance_type,
            "prior_type": p.prior_type,
            **{name: np.asarray(getattr(p, name)).tolist() for name in _VARIATIONAL_ARRAYS},
        }
    return {
        "covariance_type": p.covariance_type,
        "weights": p.weights.tolist(),
        "means": p.means.tolist(),
        "covariances": p.covariances.tolist(),
        "precisions_chol": p.precisions_chol.tolist(),
    }


def _params_from_json(v: dict[str, Any]) -> Any:
    if v.get("kind") == "variational":
        from spark_gmm.variational import VariationalParameters

        arrays = {name: np.asarray(v[name], dtype=np.float64) for name in _VARIATIONAL_ARRAYS}
        return VariationalParameters(
            covariance_type=str(v["covariance_type"]), prior_type=str(v["prior_type"]), **arrays
        )
    return MixtureParameters(
        weights=np.asarray(v["weights"], dtype=np.float64),
        means=np.asarray(v["means"], dtype=np.float64),
        covariances=np.asarray(v["covariances"], dtype=np.float64),
        precisions_chol=np.asarray(v["precisions_chol"], dtype=np.float64),
        covariance_type=str(v["covariance_type"]),
    )


@dataclass
class Checkpointer:
    """Writes and reads the EM state of one fit.

    Parameters
    ----------
    directory : str
        Local or mounted directory (created if missing).
    interval : int
        Write after every ``interval``-th EM iteration (>= 1).
    settings : dict
        The fit's settings that determine its trajectory (JSON values).
    fingerprint : dict
        The input's fingerprint (JSON values).
    """

    directory: str
    interval: int
    settings: dict[str, Any]
    fingerprint: dict[str, Any]

    @property
    def path(self) -> Path:
        return local_checkpoint_dir(self.directory) / _FILE

    # -- writing --------------------------------------------------------------

    def maybe_save(self, iteration: int, candidates: list[Any], pass_seconds: list[float]) -> bool:
        """Save after iterations that are multiples of ``interval``; True if written."""
        if iteration % self.interval:
            return False
        self.save(iteration, candidates, pass_seconds)
        return True

    def save(self, iteration: int, candidates: list[Any], pass_seconds: list[float]) -> None:
        state = {
            "format_version": FORMAT_VERSION,
            "iteration": iteration,
            "settings": self.settings,
            "fingerprint": self.fingerprint,
            "pass_seconds": pass_seconds,
            "candidates": [
                {
                    "index": c.index,
                    "k": c.k,
                    "covariance_type": c.covariance_type,
                    "init_index": c.init_index,
                    "params": None if c.params is None else _params_to_json(c.params),
                    "history": c.history,
                    "n_iter": c.n_iter,
                    "converged": c.converged,
                    "error": None if c.error is None else str(c.error),
                    "seconds": c.seconds,
                }
                for c in candidates
            ],
        }
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        log.info("checkpoint written after EM iteration %d: %s", iteration, path)

    # -- reading --------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        """The saved state, checked against this fit; None when there is none.

        Raises
        ------
        CheckpointMismatchError
            The checkpoint is unreadable, of another format version, or was written by a
            fit of other data or settings (the message names what differs).
        """
        path = self.path
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointMismatchError(
                f"checkpoint {path} cannot be read ({exc}); delete it or resume=False."
            ) from None
        if state.get("format_version") != FORMAT_VERSION:
            raise CheckpointMismatchError(
                f"checkpoint {path} has format version {state.get('format_version')}, this "
                f"spark_gmm writes {FORMAT_VERSION}; delete it or start without resuming."
            )
        for what, mine, theirs in (
            ("input", self.fingerprint, state.get("fingerprint", {})),
            ("settings", self.settings, state.get("settings", {})),
        ):
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if diff:
                detail = "; ".join(
                    f"{k}: checkpoint {theirs.get(k)!r}, now {mine.get(k)!r}" for k in diff[:4]
                )
                raise CheckpointMismatchError(
                    f"checkpoint {path} was written by a fit with other {what} ({detail}). "
                    "Resume with the same input and settings, or use another checkpointDir "
                    "(or delete it) to start from scratch."
                )
        return state

    @staticmethod
    def restore_candidates(state: dict[str, Any], make: Any) -> list[Any]:
        """Candidates rebuilt from ``state`` with ``make(index, k, covariance_type, start)``."""
        out = []
        for c in state["candidates"]:
            cand = make(c["index"], c["k"], c["covariance_type"], c["init_index"])
            cand.params = None if c["params"] is None else _params_from_json(c["params"])
            cand.history = [float(v) for v in c["history"]]
            cand.n_iter = int(c["n_iter"])
            cand.converged = bool(c["converged"])
            cand.error = None if c["error"] is None else InvalidInputError(c["error"])
            cand.seconds = float(c["seconds"])
            out.append(cand)
        return out
