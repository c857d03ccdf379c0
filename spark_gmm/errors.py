"""Exceptions raised by spark_gmm, one class per kind of failure.

All derive from ``ValueError`` (bad data or parameters) so callers that already catch
``ValueError`` keep working; each message says what to try next.
"""

from __future__ import annotations

__all__ = [
    "ComponentCollapseError",
    "ComponentNotPositiveDefiniteError",
    "CostWarning",
    "GaussianMixtureError",
    "InvalidInputError",
    "MemoryGuardError",
]

_REMEDY = (
    "Try a larger regCovar (e.g. 1e-4), fewer components (k), or scaling the features "
    "(e.g. pyspark.ml.feature.StandardScaler)."
)


class GaussianMixtureError(ValueError):
    """Base class of the errors raised while fitting or applying a mixture."""


class InvalidInputError(GaussianMixtureError):
    """The input DataFrame or a parameter cannot be used as given."""


class MemoryGuardError(InvalidInputError):
    """A fit would need more memory than the Spark settings allow (see spark_gmm.guards)."""


class CostWarning(UserWarning):
    """A fit will run, but at a cost far above a cheaper setting (see spark_gmm.guards)."""


class ComponentNotPositiveDefiniteError(GaussianMixtureError):
    """A covariance (or precision) matrix is not positive definite."""

    def __init__(self, component: int | None, n_components: int, what: str = "covariance"):
        self.component = component
        self.n_components = n_components
        who = (
            f"The tied {what} matrix"
            if component is None
            else f"The {what} of component {component} (of {n_components})"
        )
        super().__init__(
            f"{who} is not positive definite: it has collapsed onto a lower-dimensional "
            f"set of rows (e.g. duplicated or constant features). {_REMEDY}"
        )


class ComponentCollapseError(GaussianMixtureError):
    """A component lost (almost) all its weight: no row belongs to it any more."""

    def __init__(self, component: int, n_components: int, share: float):
        self.component = component
        self.n_components = n_components
        self.share = share
        super().__init__(
            f"Component {component} (of {n_components}) collapsed: its share of the total "
            f"weight fell to {share:.3g}, so no rows support it. {_REMEDY}"
        )


def short_error(exc: BaseException, limit: int = 300) -> str:
    """One line saying what went wrong, without a JVM stack trace.

    Py4J errors print "An error occurred while calling o123.method" first; the Java
    exception underneath says what actually happened.
    """
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return first[:limit]
