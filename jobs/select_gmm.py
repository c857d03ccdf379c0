"""spark-submit entry point: fit a grid of k and covariance types, save the best by BIC
(see ``spark_gmm.cli``).

spark-submit jobs/select_gmm.py --config conf/demo-select.toml
"""

import sys

from spark_gmm.cli import select_main

if __name__ == "__main__":
    sys.exit(select_main())
