"""spark-submit entry point: fit a Gaussian mixture and save it (see ``spark_gmm.cli``).

spark-submit jobs/fit_gmm.py --config conf/demo.toml
"""

import sys

from spark_gmm.cli import fit_main

if __name__ == "__main__":
    sys.exit(fit_main())
