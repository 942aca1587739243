"""The benchmarks (fast.bench.scan, fast.bench.train) run and write a well-formed result
(their --quick mode).

These are smoke tests of the measuring code, not timed tests: they assert no
speed target.  They check what must hold on any machine: every rate is
positive and finite, the measured limit bounds what it limits (for the scan:
one vector exp + FMA per element, the unavoidable work of a state update; for
a training step: the same step with a null scan, everything but the scan),
and the result file names the machine and the load it was measured under.
"""
from __future__ import annotations

import itertools
import json
import math

import numba
import numpy as np
import pytest

from conftest import real_gpu_available
from fast import numba_cpu
from fast.bench import scan as bench_scan
from fast.bench import train as bench_train


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    bench_scan.main(["--quick", "--no-plot", "--out", str(out)])
    return json.loads((out / "scan_cpu_quick.json").read_text())


def test_records_machine_and_load(quick_result):
    machine = quick_result["machine"]
    assert machine["cores"] >= 1 and machine["numba_threads"] >= 1
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert quick_result["quick"] is True
    assert quick_result["malloc"].split()[0] in ("kept", "unchanged:")  # what the run set


def test_records_the_cpu_the_kernels_were_compiled_for(quick_result):
    from llvmlite import binding
    machine = quick_result["machine"]
    assert machine["llvm_cpu"] == (numba.core.config.CPU_NAME or binding.get_host_cpu_name())
    level2 = numba_cpu._level2_cache_bytes()
    assert machine["level2_cache_kib"] == (level2 // 1024 if level2 else None)
    assert f"LLVM {machine['llvm_cpu']}" in bench_scan.machine_line(machine)
    assert bench_scan.cpu_line({"llvm_cpu": "znver3", "level2_cache_kib": 512}) == \
        "LLVM znver3, L2 512 KiB per core"
    assert bench_scan.cpu_line({"llvm_cpu": "znver3", "level2_cache_kib": None}) == \
        "LLVM znver3, L2 size unknown"
    assert bench_scan.cpu_line({"cpu": "AMD EPYC"}) == "LLVM CPU not recorded"  # older JSON


def test_sweep_counts_page_faults_of_the_backward(quick_result):
    for row in quick_result["sweep"]:
        faults = row["backward_page_faults_per_call"]
        assert faults is None or faults >= 0


def test_sweep_times_the_backward_from_a_kept_forward(quick_result):
    """Each row also times the backward as a training step runs it; chunk states are kept
    exactly where the row is longer than one backward block (float32, N padded to 16)."""
    for row in quick_result["sweep"]:
        assert row["numba_forward_keeping_s"] > 0 and row["numba_backward_kept_s"] > 0
        assert row["numba_backward_kept_G_per_s"] == pytest.approx(
            row["state_updates"] / row["numba_backward_kept_s"] / 1e9)
        block = numba_cpu._bwd_block(-(-row["N"] // 16) * 16, np.float32)
        assert row["chunk_states_kept"] == (row["L"] > block), row


def test_pairs_section_times_both_layouts(quick_result):
    """Both dtypes and both passes, each timed with the pair kernels and with 16 lanes."""
    rows = quick_result["pairs"]
    assert {(r["dtype"], r["pass"]) for r in rows} == {
        (d, p) for d in ("float64", "float32") for p in ("forward", "backward")}
    for row in rows:
        assert row["dstate"] == 8 and row["state_updates"] == (
            row["batch"] * row["dim"] * row["length"] * row["dstate"])
        assert 0 < row["pairs_s"] and 0 < row["sixteen_lanes_s"]
        assert row["speedup"] == pytest.approx(row["sixteen_lanes_s"] / row["pairs_s"])
        assert row["pairs_by_default"] is (row["dtype"] == "float64" or row["pass"] == "backward")
        assert row["library_runs"] == ("pairs" if row["dtype"] == "float64" else "channel tiles")


def test_tiles_section_times_both_layouts(quick_result):
    """The headline's forward and VMamba's forward and backward, with channel tiles on and off
    (the headline's backward records exceed the tiles' budget: not timed)."""
    rows = quick_result["tiles"]
    assert [(r["case"], r["pass"]) for r in rows] == [
        ("headline", "forward"), ("VMamba 32x32", "forward"), ("VMamba 32x32", "backward")]
    for row in rows:
        assert row["dtype"] == "float32"
        assert row["state_updates"] == row["batch"] * row["dim"] * row["length"] * row["dstate"]
        assert 0 < row["tiles_s"] and 0 < row["rows_s"]
        assert row["speedup"] == pytest.approx(row["rows_s"] / row["tiles_s"])
        assert row["tiles_G_per_s"] == pytest.approx(row["state_updates"] / row["tiles_s"] / 1e9)


def test_alternating_medians_calls_each_function_in_turn():
    order = []
    fns = [lambda: order.append("a"), lambda: order.append("b")]
    medians = bench_scan.alternating_medians(fns, 3)
    assert order == ["a", "b"] * 4  # one warm-up call each, then three rounds
    assert len(medians) == 2 and all(m >= 0 for m in medians)


def test_alternating_blocks_times_each_function_in_blocks_that_take_turns():
    order = []
    fns = [lambda: order.append("a"), lambda: order.append("b")]
    medians = bench_scan.alternating_blocks(fns, 2, rounds=3)
    # per round and function: one untimed call, then two timed ones
    assert order == (["a"] * 3 + ["b"] * 3) * 3
    assert len(medians) == 2 and all(m >= 0 for m in medians)


def test_counting_faults_counts_pages_touched_for_the_first_time():
    """Fresh anonymous memory faults once per page at first touch; a no-op does not fault."""
    import mmap  # noqa: PLC0415
    import resource  # noqa: PLC0415,F401 - the counter exists (Unix)
    pages = 64

    def touch_fresh_pages():
        with mmap.mmap(-1, pages * mmap.PAGESIZE) as m:
            for i in range(pages):
                m[i * mmap.PAGESIZE] = 1

    for fn, fresh in ((touch_fresh_pages, True), (lambda: None, False)):
        counted, per_call = bench_scan.counting_faults(fn)
        assert per_call() is None  # nothing counted yet
        for _ in range(3):  # a warm-up call, then two counted ones
            counted()
        assert (per_call() >= pages) if fresh else (per_call() < pages)


def test_rates_are_positive_and_below_the_machine_limit(quick_result):
    head = quick_result["headline"]
    rates = [head[k] for k in head if k.endswith("_G_per_s")]
    assert rates and all(math.isfinite(r) and r > 0 for r in rates)
    limit = head["machine_limit_G_per_s"]
    assert head["numba_forward_G_per_s"] < limit
    assert head["numba_backward_G_per_s"] < limit
    limit_1 = head["machine_limit_1_thread_G_per_s"]  # the same kernels on one thread
    assert head["numba_forward_1_thread_G_per_s"] < limit_1
    assert head["numba_backward_1_thread_G_per_s"] < limit_1
    assert head["forward_1_thread_fraction_of_limit"] == pytest.approx(
        head["numba_forward_1_thread_G_per_s"] / limit_1)
    for row in quick_result["sweep"]:
        assert row["numba_forward_G_per_s"] > 0 and row["state_updates"] == (
            row["B"] * row["D"] * row["L"] * row["N"])




def test_peer_rows_are_timed_or_say_why(quick_result):
    """The side-by-side table: three peers (timed after agreeing with ours, or skipped with a
    reason), then the reference and the fast path, both timed."""
    rows = quick_result["peers"]
    names = [row["name"] for row in rows]
    assert names[-2:] == ["ssm_ref.selective_scan", 'fast.selective_scan(backend="numba")']
    assert len(rows) == 5 and any("selective_scan_ref" in n for n in names[:3])
    for row in rows:
        if "skipped" in row:
            assert isinstance(row["skipped"], str) and row["skipped"], row
        else:
            assert row["time_s"] > 0 and row["G_per_s"] > 0, row
    assert all("time_s" in row for row in rows[-2:])
    for row in rows[:3]:  # a timed peer agreed with fast.selective_scan first
        assert "skipped" in row or row["max_abs_diff"] <= 1e-3, row


def test_official_reference_is_read_from_a_checkout_or_refused(tmp_path):
    from fast.bench import peers
    run, reason = peers.official_peer(None)
    assert run is None and "--mamba-src" in reason and "MAMBA_SRC" in reason
    with pytest.raises(ValueError, match="selective_scan_interface.py"):
        peers.load_official_ref(tmp_path)  # not a clone: the file is named
    target = tmp_path / peers.OFFICIAL_FILE
    target.parent.mkdir(parents=True)
    target.write_text("import selective_scan_cuda\n\ndef other():\n    pass\n")
    with pytest.raises(ValueError, match="defines no selective_scan_ref"):
        peers.load_official_ref(tmp_path)  # the module's imports are never run

# --------------------------------------------------------------------------- fast.bench.train
@pytest.fixture(scope="module")
def train_module():
    return bench_train


@pytest.fixture(scope="module")
def train_result(train_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    # the smallest case: digits size only, 8 images, 3 timed steps after 1 warm-up step
    train_module.main(["--quick", "--no-plot", "--out", str(out), "--batch", "8", "--img", "0"])
    return json.loads((out / "train_cpu_quick.json").read_text())


def test_train_records_machine_load_and_blas(train_result):
    machine = train_result["machine"]
    assert machine["cores"] >= 1 and machine["numba_threads"] >= 1
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert train_result["quick"] is True
    cpu = train_result["cpu"]
    assert cpu["blas_threads"] == 1 and all(lib["num_threads"] == 1 for lib in cpu["blas"])
    for row in cpu["rows"]:
        others = row["other_processes_cores"]  # other processes' CPU use during the case
        assert others is None or 0 <= others <= machine["cores"] + 0.5
        assert len(row["load_average_at_case_start"]) == 3


def test_train_rows_are_positive_and_above_the_floor(train_result):
    rows = train_result["cpu"]["rows"]
    for model in ("vim", "vmamba"):
        by = {r["backend"]: r for r in rows if r["model"] == model and r["img"] == 8}
        assert {"ref", "numba", "floor"} <= set(by), sorted(by)
        for r in by.values():
            times = [r["ms"], r["ms_min"], r["ms_max"], r["images_per_s"], *r["ms_all"]]
            assert all(math.isfinite(t) and t > 0 for t in times), r["backend"]
            assert r["ms_min"] <= r["ms"] <= r["ms_max"] and r["repeats"] == 3
            assert r["floor_ms"] == by["floor"]["ms"]
            # the floor is the step without the scan: never slower.  Its fastest repeat
            # against the step's slowest (and 10%): a load spike during one of the two
            # measurements (seen in a CI run beside a book build) does not fail this, a floor
            # that ran the scan (3-6x the floor here) does
            floor_min = by["floor"]["ms_min"]
            assert floor_min <= 1.1 * r["ms_max"], (model, r["backend"], r["ms_all"],
                                                    by["floor"]["ms_all"])
        assert by["ref"]["speedup_vs_ref"] == 1.0
        assert by["ref"]["state_updates_per_forward"] > 0  # the null scan saw the calls


@pytest.mark.skipif(real_gpu_available(), reason="a real GPU is here: the GPU section runs")
def test_train_gpu_section_says_why_it_was_skipped(train_result):
    gpu = train_result["gpu"]
    assert set(gpu) == {"skipped"} and len(gpu["skipped"]) > 10


def test_null_scan_returns_what_the_scan_returns(train_module):
    """Same structure, shapes and dtypes as the reference; None where it gives None."""
    import ssm_ref
    null = train_module.NullScan()
    rng = np.random.default_rng(0)
    Bsz, D, L, N = 2, 3, 5, 4
    u, z = rng.standard_normal((Bsz, D, L)), rng.standard_normal((Bsz, D, L))
    delta = rng.uniform(0.01, 0.1, (Bsz, D, L))  # a positive step, with or without softplus
    Bm, Cm = rng.standard_normal((Bsz, N, L)), rng.standard_normal((Bsz, N, L))
    options = ({}, {"D": np.ones(D), "z": z, "delta_bias": np.zeros(D), "delta_softplus": True})
    for A, kw in itertools.product((-np.ones((D, N)), -np.ones((D, N)) + 1j), options):
        y_ref = ssm_ref.selective_scan(u, delta, A, Bm, Cm, **kw)
        y = null.forward(u, delta, A, Bm, Cm, **kw)
        assert (y.shape, y.dtype) == (y_ref.shape, y_ref.dtype) and not y.any()
        got = null.forward(u, delta, A, Bm, Cm, return_last_state=True, **kw)
        want = ssm_ref.selective_scan(u, delta, A, Bm, Cm, return_last_state=True, **kw)
        assert [(a.shape, a.dtype) for a in got] == [(a.shape, a.dtype) for a in want]
        g_ref = ssm_ref.selective_scan_backward(u, u, delta, A, Bm, Cm, **kw)
        g = null.backward(u, u, delta, A, Bm, Cm, **kw)
        assert g.keys() == g_ref.keys()
        for k in g:
            if g_ref[k] is None:
                assert g[k] is None, k
            else:
                assert (g[k].shape, g[k].dtype) == (g_ref[k].shape, g_ref[k].dtype), k


def test_train_device_path_on_the_fake_device(train_module, fake_xp):
    """The GPU rows' code path (model.to(xp), batch on the device, sync before the clock),
    run on the strict fake CuPy with the reference scan in place of the cuda backend."""
    from fake_device import COUNTS, DeviceArray
    from ssm_ref.cli import resolve_backend
    syncs = []
    rows = train_module.run_case("vim", 8, 4, {"ref": resolve_backend("ref")}, repeats=2,
                                 warmup=1, xp=fake_xp, sync=lambda: syncs.append(1))
    assert [r["backend"] for r in rows] == ["ref", "floor"]
    assert all(r["ms"] > 0 and r["repeats"] == 2 for r in rows)
    assert len(syncs) == 2 + 2 * 2  # after each backend's warm-up, after each timed step
    assert COUNTS["sync"] == 0 and COUNTS["to_host"] == 0  # no host round-trip in a step
    assert rows[0]["scan_calls_per_forward"] == [[4, 48, 17, 8]] * 4
    null = train_module.NullScan()
    y = null.forward(fake_xp.zeros((1, 2, 3)), None, fake_xp.zeros((2, 4)), None, None)
    assert isinstance(y, DeviceArray)


def test_gpu_check_without_a_gpu_says_so_in_one_line(capsys, tmp_path):
    from fast.bench import gpu_check, train
    if train.gpu_skip_reason() is None:
        pytest.skip("a real GPU is here: make gpu-check runs the real thing")
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("gpu-check: no usable CUDA GPU here")
    assert not list(tmp_path.iterdir())  # nothing written


def test_gpu_check_synthetic_cifar_is_the_real_format_and_learnable(tmp_path):
    """The training run's data: CIFAR-10 binary files that load_dataset reads, and whose
    classes a nearest-template rule separates (so a model that learns beats chance)."""
    from fast.bench.gpu_check import write_synthetic_cifar
    from ssm_ref.data import load_dataset
    ds = load_dataset("cifar10", root=write_synthetic_cifar(tmp_path, n_train=500, n_test=200))
    assert ds.x_train.shape == (500, 32, 32, 3) and ds.x_test.shape == (200, 32, 32, 3)
    means = np.stack([ds.x_train[ds.y_train == k].mean(0) for k in range(10)])  # (10, 32, 32, 3)
    d = ((ds.x_test[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert (d.argmin(1) == ds.y_test).mean() > 0.9
