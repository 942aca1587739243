"""benchmarks/compare_revisions.py and benchmarks/_trees.py: the copies of the library that
the version comparisons time, and their errors (the timings themselves are benchmarks)."""
from __future__ import annotations

import subprocess

import pytest
from cases import script_module, script_refusal
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "compare_revisions.py"


needs_git = pytest.mark.skipif(not (ROOT / ".git").exists(),
                               reason="not a git checkout: no revision to copy")


@pytest.fixture(scope="module")
def trees():
    return script_module(ROOT / "benchmarks" / "_trees.py", "_trees")


@needs_git
def test_a_revision_is_copied_as_committed(trees, tmp_path):
    """HEAD's fast/ and ssm_ref/ as git has them: the same files as the commit lists."""
    dest = trees.copy_packages(tmp_path / "rev", "HEAD")
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD", "fast", "ssm_ref"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == sorted(listed)
    committed = subprocess.run(["git", "show", "HEAD:fast/__init__.py"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    assert (dest / "fast" / "__init__.py").read_text() == committed


@needs_git
def test_a_revision_is_recorded_as_its_commit(trees):
    """The JSON's "rev" is the commit's hash, not a name such as HEAD that moves on."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    short = trees.commit_of("HEAD")
    assert len(short) >= 7 and head.startswith(short)
    assert trees.commit_of(head) == short
    with pytest.raises(SystemExit, match="no revision 'no-such-rev-xyz'"):
        trees.commit_of("no-such-rev-xyz")


def test_the_working_tree_is_copied_without_caches(trees, tmp_path):
    dest = trees.copy_packages(tmp_path / "tree")
    assert (dest / "fast" / "numba_tiles.py").read_text() == (
        ROOT / "fast" / "numba_tiles.py").read_text()
    assert not list(dest.rglob("__pycache__"))


@needs_git
def test_an_unknown_revision_stops_with_its_name(trees, tmp_path):
    with pytest.raises(SystemExit, match="no revision 'no-such-rev-xyz'"):
        trees.copy_packages(tmp_path / "rev", "no-such-rev-xyz")


def test_a_failing_run_stops_with_its_error_output(trees, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('kernel exploded')\n")
    with pytest.raises(SystemExit, match="kernel exploded"):
        trees.run_in(tmp_path, bad)


def test_a_server_answers_each_line_and_ends_with_its_input(trees, tmp_path):
    """Server: one float back per line sent, in order, from one process (its state lives on);
    closed, the process has ended."""
    script = tmp_path / "count.py"
    script.write_text("import sys\nprint('ready', flush=True)\nn = 0\nfor line in sys.stdin:\n"
                      "    n += 1\n    print(n * float(sys.argv[1]), flush=True)\n")
    with trees.Server(tmp_path, script, 2.5) as server:
        server.wait("ready")
        assert [server.ask() for _ in range(3)] == [2.5, 5.0, 7.5]
    assert server.proc.returncode == 0
    with pytest.raises(SystemExit, match="answered 'ready'"):  # not the line expected
        with trees.Server(tmp_path, script, 1.0) as server:
            server.wait("set")


def test_a_failing_server_stops_with_its_error_output(trees, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nsys.stdin.readline()\nraise RuntimeError('kernel exploded')\n")
    with pytest.raises(SystemExit, match="(?s)answered ''.*kernel exploded"):
        with trees.Server(tmp_path, bad) as server:
            server.ask()


def test_a_serving_version_times_its_case_once_per_line():
    """serve: the case made ready once, then a positive time (µs) per request line; the
    rounds' own ratios come out as their median and range."""
    import io

    import numba
    compare = script_module(SCRIPT, "compare_revisions")
    out = io.StringIO()
    threads = numba.get_num_threads()  # as it is: serve sets it for the whole process
    compare.serve("tiny", "forward", threads, 3, lines=["go\n", "go\n"], out=out,
                  check=lambda module: None)  # the test runs the checkout itself
    ready, *answers = out.getvalue().split()
    times = [float(x) for x in answers]
    assert ready == "ready" and len(times) == 2 and min(times) > 0
    assert compare.paired({"rev": [2.0, 3.0, 8.0], "tree": [1.0, 2.0, 2.0]}) == (2.0, 1.5, 4.0)


def test_a_worker_that_imported_the_checkout_stops(trees):
    import fast
    with pytest.raises(SystemExit, match="imported the checkout"):
        trees.check_not_checkout(fast)


@pytest.mark.parametrize("args, message", [
    (["HEAD", "--rounds", "0"], "--rounds, --turns and --threads take positive numbers"),
    (["HEAD", "--turns", "0"], "--rounds, --turns and --threads take positive numbers"),
    (["HEAD", "--threads", "0"], "--rounds, --turns and --threads take positive numbers"),
    (["HEAD", "--cases", "huge"], "invalid choice: 'huge'"),
    (["HEAD", "--name", "../x.json"], "--name takes a file name ending in .json"),
    (["HEAD", "--name", "x.txt"], "--name takes a file name ending in .json"),
    (["HEAD", "--cases", "headline", "--passes", "step"],
     "--passes step takes a case with a training step: tiny, tiny-f64"),
    (["no-such-rev-xyz", "--cases", "tiny", "--rounds", "1"], "no revision 'no-such-rev-xyz'"),
])
def test_bad_arguments_get_one_clear_line(args, message):
    status, stderr = script_refusal(SCRIPT, *args)
    assert status != 0 and message in stderr


def test_every_case_has_its_dtype_and_shapes():
    """The cases' inputs: float32 ones and the float64 one (without a float64 case a change
    that made the float64 backward twice as slow went unseen), shapes (B, D, L) and (D, N)."""
    import numpy as np
    compare = script_module(SCRIPT, "compare_revisions")
    for case, (batch, dim, length, dstate, groups, dtype) in compare.CASES.items():
        kw, dout = compare.inputs(case)
        assert kw["u"].shape == dout.shape == (batch, dim, length), case
        assert kw["A"].shape == (dim, dstate), case
        arrays = [v for v in kw.values() if isinstance(v, np.ndarray)] + [dout]
        assert {a.dtype for a in arrays} == {np.dtype(dtype)}, case
        assert ("z" in kw) == (groups is None), case
    assert {spec[-1] for spec in compare.CASES.values()} == {"float32", "float64"}
    assert set(compare.REPEATS) == set(compare.CASES)  # every case runs without --repeats


def test_a_case_call_runs_the_pass_it_names():
    """case_call (the timed function of compare_revisions, profile_loops and same_kernels):
    the forward returns the scan's output, the backward and the backward from a kept forward
    the gradients of the case's dout."""
    import numpy as np

    import fast
    compare = script_module(SCRIPT, "compare_revisions")
    kw, dout = compare.inputs("tiny")
    out = compare.case_call("tiny", "forward")()
    np.testing.assert_array_equal(out, fast.selective_scan(**kw, backend="numba"))
    expected = fast.selective_scan_backward(dout, **kw, backend="numba")
    for pass_name in ("backward", "kept"):
        grads = compare.case_call("tiny", pass_name)()
        assert grads.keys() == expected.keys()
        for name, e in expected.items():
            if e is None:
                assert grads[name] is None, name
            else:
                np.testing.assert_array_equal(grads[name], e, err_msg=f"{pass_name}: {name}")


def test_a_step_case_trains_the_model_its_scan_comes_from():
    """case_call(case, "step"): one training step of the case's model, whose forward asks
    the scan for the case's (B, D, L, N), each call an AdamW step (the loss moves); a case
    without a model refuses "step" naming the cases that have one."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from ssm_ref.vision import build_model
    compare = script_module(SCRIPT, "compare_revisions")
    name, img, dtype = compare.STEP_MODELS["tiny-f64"]
    config = build_model(name, img_size=(img, img), in_chans=1, n_classes=10).config
    batch, dim, length, dstate, _, case_dtype = compare.CASES["tiny-f64"]
    grid = img // config.patch_size
    assert (dim, length, dstate, dtype) == (config.expand * config.embed_dim,
                                            grid * grid + 1, config.d_state, case_dtype)
    with threadpool_limits():  # the step limits BLAS for good: undone after the test
        step = compare.case_call("tiny-f64", "step")
        losses = [float(step()) for _ in range(3)]
    assert all(np.isfinite(losses)) and len(set(losses)) == 3
    with pytest.raises(ValueError, match="no training step; the cases with one: tiny, "):
        compare.case_call("headline", "step")
