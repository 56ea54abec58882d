"""Reliability benchmark of `curvedit serve` (same as `curvedit bench reliability`); see
curvedit/service/reliability.py.

    python benchmarks/bench_reliability.py --out benchmarks/cpu_reliability_DATE.json
"""

import sys

from curvedit.service.reliability import main

if __name__ == "__main__":
    sys.exit(main())
