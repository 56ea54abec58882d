"""Engine benchmark: ``python benchmarks/bench_engine.py [options]`` = ``curvedit bench engine [options]``.

Times torch eager, torch.compile, onnxruntime and (on CUDA) the triton engine side by side on the DeCurvEd
edit for the shipped flow and a synthetic d=512 flow; see ``curvedit.engines.bench`` for the columns and the
FLOP formula. Example: ``python benchmarks/bench_engine.py --json benchmarks/cpu.json``.
"""

import sys

from curvedit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "engine", *sys.argv[1:]]))
