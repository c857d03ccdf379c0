"""spark-submit entry point: score a table with a saved model (see ``spark_gmm.cli``).

    spark-submit jobs/score_gmm.py --model out/demo/model --input data/sample_clusters.csv \
        --format csv --id-cols id --output out/demo/scored --mode overwrite
"""

import sys

from spark_gmm.cli import score_main

if __name__ == "__main__":
    sys.exit(score_main())
