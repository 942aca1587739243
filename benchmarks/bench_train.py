"""Run ``fast.bench.train`` from a checkout: ``python benchmarks/bench_train.py [--quick] [--help]``.

The benchmark itself lives in the installed package (``python -m fast.bench.train``,
``ssm-ref bench --suite train``); this script only puts the checkout first on the
import path, so it also runs where the package is not installed.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fast.bench.train import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python benchmarks/bench_train.py")
