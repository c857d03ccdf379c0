"""spark_gmm: Gaussian-mixture clustering fitted by distributed EM on Apache Spark.

``GaussianMixture`` is a drop-in for ``pyspark.ml.clustering.GaussianMixture`` with
scikit-learn's numerics (log-space E-step, Cholesky of the precision, ``regCovar``, four
covariance types, restarts sharing data passes). ``GaussianMixtureSelector`` chooses k
and the covariance type by BIC/AIC over a grid fitted in shared data passes;
``BayesianGaussianMixture`` (sklearn's variational Bayesian mixture) empties the
components the data do not need in one fit. ``GaussianMixtureModel.update`` folds new
rows into a model (online EM), and ``StreamingGaussianMixture`` does it for every
micro-batch of a Structured Streaming query.
"""

from spark_gmm.bayesian import (
    BayesianGaussianMixture,
    BayesianGaussianMixtureModel,
    BayesianGaussianMixtureSummary,
)
from spark_gmm.em import ConvergenceWarning
from spark_gmm.errors import (
    ComponentCollapseError,
    ComponentNotPositiveDefiniteError,
    GaussianMixtureError,
    InvalidInputError,
)
from spark_gmm.estimator import GaussianMixture, GaussianMixtureModel, GaussianMixtureSummary
from spark_gmm.selection import GaussianMixtureSelectionModel, GaussianMixtureSelector
from spark_gmm.session import build_session
from spark_gmm.streaming import StreamingGaussianMixture

__version__ = "0.1.0"

__all__ = [
    "BayesianGaussianMixture",
    "BayesianGaussianMixtureModel",
    "BayesianGaussianMixtureSummary",
    "ComponentCollapseError",
    "ComponentNotPositiveDefiniteError",
    "ConvergenceWarning",
    "GaussianMixture",
    "GaussianMixtureError",
    "GaussianMixtureModel",
    "GaussianMixtureSelectionModel",
    "GaussianMixtureSelector",
    "GaussianMixtureSummary",
    "InvalidInputError",
    "StreamingGaussianMixture",
    "__version__",
    "build_session",
]
