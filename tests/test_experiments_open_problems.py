"""The §6 experiments (experiments/generalization.py, experiments/adaptive_scans.py): quick runs
end to end, well-formed results, and their measuring helpers against hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from test_experiments import check_common, check_stat, load, quick_run

from ssm_ref import selective_scan


@pytest.fixture(scope="module")
def generalization_run(tmp_path_factory):
    return quick_run("generalization", tmp_path_factory)


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    return quick_run("adaptive_scans", tmp_path_factory)


def test_generalization_quick(generalization_run):
    payload, on_disk, out = generalization_run
    check_common(on_disk, out, "generalization")
    mod = load("generalization")
    res = on_disk["results"]
    assert res["shifts"] == list(mod.SHIFTS)
    assert list(res["tasks"]) == list(mod.TASKS) == ["digits", "pair"]
    for task, out in res["tasks"].items():
        assert list(out["configs"]) == [label for label, _ in mod.CONFIGS]
        for label, entry in out["configs"].items():
            for s in mod.SHIFTS:
                check_stat(entry["accuracy"][s], 1)
                assert 0.0 <= entry["accuracy"][s]["mean"] <= 1.0
            check_stat(entry["accuracy_without_state"], 1)
            assert set(entry["state_drift"]) == set(mod.SHIFTS) - {"clean"}
            assert all(v["mean"] >= 0 for v in entry["state_drift"].values())
        wn, base = out["configs"]["weight norm"], out["configs"]["baseline"]
        assert wn["n_params"] > base["n_params"]  # the g's
    assert len(on_disk["runs"]) == len(mod.CONFIGS) * len(mod.TASKS)


def test_no_state_scan_keeps_only_the_skip(rng):
    """h_t = 0: y = D u * silu(z)."""
    from ssm_ref.nn import silu
    mod = load("generalization")
    u, dt = rng.standard_normal((2, 3, 5)), rng.uniform(0.1, 0.5, (2, 3, 5))
    A = -rng.uniform(0.5, 1.5, (3, 4))
    Bm, Cm = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 5))
    D, z = rng.standard_normal(3), rng.standard_normal((2, 3, 5))
    y = mod.no_state_scan(u, dt, A, Bm, Cm, D=D, z=z)
    assert_close(y, D[None, :, None] * u * silu(z))


def test_last_state_recorder_changes_nothing(rng):
    mod = load("generalization")
    rec = mod.LastStateRecorder(selective_scan)
    u, dt = rng.standard_normal((2, 3, 5)), rng.uniform(0.1, 0.5, (2, 3, 5))
    A = -rng.uniform(0.5, 1.5, (3, 4))
    Bm, Cm = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 5))
    y = rec.scan(u, dt, A, Bm, Cm)
    y0, h0 = selective_scan(u, dt, A, Bm, Cm, return_last_state=True)
    assert_close(y, y0)
    assert_close(rec.states[0], h0)


def test_adaptive_scans_quick(adaptive_run):
    payload, on_disk, out = adaptive_run
    check_common(on_disk, out, "adaptive_scans")
    mod = load("adaptive_scans")
    for task in ("pair", "digits"):
        res = on_disk["results"][task]
        assert list(res) == [label for label, _, _ in mod.CONFIGS]
        for label, opts, kind in mod.CONFIGS:
            entry = res[label]
            check_stat(entry["test_accuracy"], 1)
            want = opts.get("keep", 16) + 1
            assert entry["tokens_scanned"] == want and entry["tokens_total"] == 17
            assert entry["kind"] == kind
    pair = on_disk["results"]["pair"]
    assert pair["raster"]["marks_kept"]["mean"] == 1.0  # a full scan keeps both marks
    assert pair["column"]["mark_distance"]["mean"] > pair["raster"]["mark_distance"]["mean"]


def test_mark_tokens_and_stats_by_hand():
    mod = load("adaptive_scans")
    x = np.zeros((2, 12, 12, 1))
    x[0, 3:6, 0:3] = 1.0  # left mark in patch row 1, right mark in patch row 1
    x[0, 3:6, 9:12] = 1.0
    x[1, 7:10, 0:3] = 1.0  # rows 7-9: mostly patch row 2
    x[1, 7:10, 9:12] = 1.0
    left, right = mod.mark_tokens(x, 3)
    assert left.tolist() == [4, 8] and right.tolist() == [7, 11]
    raster = np.tile(np.arange(16), (2, 1))
    d, kept = mod.mark_stats(raster, left, right)
    assert d == 3.0 and kept == 1.0
    sparse = np.array([[4, 7, 0, 1], [8, 0, 1, 2]])  # image 1 lost its right mark
    d, kept = mod.mark_stats(sparse, left, right)
    assert d == 1.0 and kept == 0.5
