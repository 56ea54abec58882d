"""Load benchmark of `curvedit serve` (same as `curvedit bench serve`); see curvedit/bench/loadtest.py.

    python benchmarks/bench_serve.py --duration 3 --json
"""

import sys

from curvedit.bench.loadtest import main

if __name__ == "__main__":
    sys.exit(main())
