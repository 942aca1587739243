"""Run ``fast.bench.scan`` from a checkout: ``python benchmarks/bench_scan.py [--quick] [--help]``.

The benchmark itself lives in the installed package (``python -m fast.bench.scan``,
``ssm-ref bench --suite scan``); this script only puts the checkout first on the
import path, so it also runs where the package is not installed.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fast.bench.scan import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python benchmarks/bench_scan.py")
