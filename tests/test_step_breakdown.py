"""benchmarks/step_breakdown.py: the parts a training step's time is charged to (the times
themselves are benchmarks)."""
from __future__ import annotations

import pytest
from cases import script_module, script_refusal
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "step_breakdown.py"


@pytest.fixture(scope="module")
def tool():
    return script_module(SCRIPT, "step_breakdown")


def test_times_are_charged_to_the_path_they_ran_in(tool):
    """A timed call inside another is charged to both labels' path, once per call; a
    launch is charged to its kernel's name; nothing is recorded before the first step."""
    clock = tool.Clock()
    inner = clock.timed("inner", lambda x: x + 1)
    outer = clock.timed("outer", lambda x: inner(x) * inner(x))

    def kernel(x):
        return -x
    launch = clock.launcher(lambda k, *args: k(*args))
    assert outer(1) == 4 and not clock.steps
    clock.new_step()
    assert outer(2) == 9 and launch(kernel, 3) == -3
    step = clock.steps[0]
    assert {p: calls for p, (_, calls) in step.items()} == {
        ("outer",): 1, ("outer", "inner"): 2, ("kernel kernel",): 1}
    assert step[("outer",)][0] >= step[("outer", "inner")][0] >= 0
    assert clock.stack == []


def test_the_clock_is_taken_off_again_also_after_an_error(tool):
    from fast import numba_cpu, numba_fused
    before = (numba_cpu._scan, numba_cpu._launch, numba_fused._launch)
    with pytest.raises(RuntimeError, match="inside"):
        with tool.clocked(tool.Clock()):
            assert numba_cpu._scan is not before[0]
            raise RuntimeError("inside")
    assert (numba_cpu._scan, numba_cpu._launch, numba_fused._launch) == before


def test_a_step_is_broken_down_into_the_scan_and_the_rest(tool):
    """tiny Vim 8x8 (depth 2, both directions): 4 scans forward and 4 backward per step, each
    with its layouts and one scan kernel (the tiles' backward also sums its threads' copies
    of dB and dC, two calls of sum_copies a scan), the forward with its checks (the backward
    starts from the forward's checked arguments); the fused convolution's kernels; the
    rest; every part's time is some of the step's."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits():  # the step limits BLAS for good: undone after the test
        step_s, rows = tool.breakdown("tiny", steps=2, warmup=1)
    by_path = {tuple(r["path"]): r for r in rows}
    for scan in ("scan forward", "scan backward"):
        assert by_path[(scan,)]["calls_per_step"] == 4
        kernels = [p for p in by_path if p[0] == scan and len(p) == 2
                   and p[1].startswith("kernel ") and p[1] != "kernel sum_copies"]
        assert len(kernels) == 1 and by_path[kernels[0]]["calls_per_step"] == 4
        assert by_path[(scan, "layouts")]["calls_per_step"] == 4
        assert (scan, "its own Python") in by_path
    assert by_path[("scan backward", "kernel sum_copies")]["calls_per_step"] == 8
    assert ("scan forward", "kernel sum_copies") not in by_path
    assert by_path[("scan forward", "checks")]["calls_per_step"] == 4
    assert ("scan backward", "checks") not in by_path
    assert {("kernel _conv_fwd",), ("kernel _conv_bwd",)} <= set(by_path)
    assert rows[-1]["path"] == ["the rest of the step"]
    assert step_s > 0 and all(0 < r["ms_per_step"] < 1e3 * step_s for r in rows
                              if r["path"][-1] != "its own Python")


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps takes a positive number"),
    (["--threads", "-1"], "--steps takes a positive number, --warmup and --threads one >= 0"),
    (["--case", "headline"], "invalid choice: 'headline'"),
])
def test_bad_arguments_get_one_clear_line(args, message):
    status, stderr = script_refusal(SCRIPT, *args)
    assert status != 0 and message in stderr
