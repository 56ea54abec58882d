"""Reliability benchmark of `curvedit serve` (same as `curvedit bench reliability`); see
curvedit/bench/reliability.py.

    python benchmarks/bench_reliability.py --out out/reliability.json
    curvedit bench results record reliability out/reliability.json --machine NAME
"""

import sys

from curvedit.bench.reliability import main

if __name__ == "__main__":
    sys.exit(main())
