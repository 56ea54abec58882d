"""Engine benchmark: ``python benchmarks/bench_engine.py [options]`` = ``curvedit bench engine [options]``.

Times torch eager, torch.compile, onnxruntime and (on CUDA) the triton engine side by side on the DeCurvEd
edit for the shipped flow and a synthetic d=512 flow; see ``curvedit.bench.engine`` for the columns and the
FLOP formula. Example: ``python benchmarks/bench_engine.py --json out/engine.json``,
then ``curvedit bench results record engine out/engine.json``.

It builds its own parser from ``curvedit.bench.engine`` rather than going through ``curvedit.cli``, so it runs
where the service's packages are missing (the lent GPU machines have no grpcio-health-checking/-reflection).
"""

import argparse
import sys

from curvedit.bench.engine import add_arguments, cmd_bench_engine

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench_engine.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(cmd_bench_engine(parser.parse_args()))
