"""spark-submit entry point: fold new rows into a saved model (see ``spark_gmm.cli``).

    spark-submit jobs/update_gmm.py --model models/day-1 --input data/events \
        --where "date = '2026-11-28'" --features x,y,z --output models/day-2 --half-life 7
"""

import sys

from spark_gmm.cli import update_main

if __name__ == "__main__":
    sys.exit(update_main())
