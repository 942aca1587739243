"""The benchmark script runs and writes a well-formed result (its --quick mode).

This is a smoke test of the measuring code, not a timed test: it asserts no
speed target.  It checks what must hold on any machine: every rate is
positive and finite, the measured machine limit (one vector exp + FMA per
element, the unavoidable work of a state update) bounds the scan's rate, and
the result file names the machine and the load it was measured under.
"""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("bench_scan", ROOT / "benchmarks" / "bench_scan.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path_factory.mktemp("bench")
    bench.main(["--quick", "--no-plot", "--out", str(out)])
    return json.loads((out / "scan_cpu_quick.json").read_text())


def test_records_machine_and_load(quick_result):
    machine = quick_result["machine"]
    assert machine["cores"] >= 1 and machine["numba_threads"] >= 1
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert quick_result["quick"] is True


def test_rates_are_positive_and_below_the_machine_limit(quick_result):
    head = quick_result["headline"]
    rates = [head[k] for k in head if k.endswith("_G_per_s")]
    assert rates and all(math.isfinite(r) and r > 0 for r in rates)
    limit = head["machine_limit_G_per_s"]
    assert head["numba_forward_G_per_s"] < limit
    assert head["numba_backward_G_per_s"] < limit
    for row in quick_result["sweep"]:
        assert row["numba_forward_G_per_s"] > 0 and row["state_updates"] == (
            row["B"] * row["D"] * row["L"] * row["N"])

