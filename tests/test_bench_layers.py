"""benchmarks/bench_layers.py: its cases compute what they are named for (the times themselves
are benchmarks)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cases import script_module
from conftest import ROOT, assert_close

SCRIPT = ROOT / "benchmarks" / "bench_layers.py"


@pytest.fixture(scope="module")
def tool():
    return script_module(SCRIPT, "bench_layers")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_both_sides_of_each_case_compute_the_same_layer(tool, dtype):
    """The reference and Numba calls of a case give the same results, so the ratio compares
    one layer with itself (the SS2D backward's dy channels first on both sides)."""
    for name, (_, sides) in tool.cases(np.dtype(dtype), np.random.default_rng(0)).items():
        for i in range(2):
            ref, got = sides["ref"][i](), sides["numba"][i]()
            ref, got = ((ref,), (got,)) if isinstance(ref, np.ndarray) else (ref, got)
            assert len(ref) == len(got), name
            for r, g in zip(ref, got):
                # relative to the array's largest entry (at least 1): the linear layers' dW
                # and db sum 16384 tokens, whose float32 rounding goes with the terms, not
                # with an entry that cancels (both sides err alike against float64)
                scale = max(1.0, float(np.abs(r).max()))
                assert_close(g / dtype(scale), r.astype(np.float64) / scale, kind="backend",
                             dtype=dtype, err_msg=f"{name} pass {i}")


def test_a_run_writes_a_row_per_case_dtype_and_pass(tool, tmp_path, capsys):
    tool.main(["--turns", "1", "--repeats", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "layers_cpu.json").read_text())
    assert len(data["rows"]) == 10 * 2 * 2 and data["machine"]["cores"] >= 1
    for r in data["rows"]:
        assert r["ref_ms"] > 0 and r["numba_ms"] > 0
        assert r["ratio"] == pytest.approx(r["ref_ms"] / r["numba_ms"])
    assert "ref / numba" in capsys.readouterr().out
