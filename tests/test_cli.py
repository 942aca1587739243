"""Tests of the ``ssm-ref`` command line (ssm_ref.cli): through ``main([...])`` and through
``python -m ssm_ref.cli`` in a subprocess; outputs, one-line errors with exit status 2,
backend selection, the bench pass-through, determinism with the seed.

Training through ``main`` uses the ``TinyMLP`` of test_train (patched in as the model
builder) so that the command line is tested apart from the vision models; one test runs the
real models at micro size.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from test_train import TinyConfig, TinyMLP

import fast
import ssm_ref
from ssm_ref import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def built(monkeypatch):
    """Patch the model builder: record its arguments, return a TinyMLP."""
    calls = []

    def fake_build(name, *, seed, scan_fn, scan_backward_fn, img_size, in_chans, n_classes,
                   hidden=16, **rest):
        calls.append(dict(name=name, seed=seed, scan_fn=scan_fn, scan_backward_fn=scan_backward_fn,
                          img_size=img_size, in_chans=in_chans, n_classes=n_classes, hidden=hidden,
                          **rest))
        return TinyMLP(TinyConfig((*img_size, in_chans), hidden, n_classes), seed=seed)

    monkeypatch.setattr(cli, "_build_model", fake_build)
    return calls


def _train_args(out, *extra):
    return ["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--lr", "0.01",
            "--no-progress", "--out", str(out), *extra]


# --------------------------------------------------------------------------- train
def test_train_writes_metrics_curves_and_checkpoint(built, tmp_path, capsys):
    rc = cli.main(_train_args(tmp_path / "run", "--seed", "3", "--scan", "snake", "--augment", "shift",
                              "--model-opt", "hidden=8", "--model", "vmamba"))
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.3 < m["test_accuracy"] <= 1.0  # chance is 0.1
    assert m["train_loss"][-1] < m["train_loss"][0]
    assert len(m["train_accuracy"]) == 2 and m["wall_time_s"] > 0
    assert m["n_params"] == 64 * 8 + 8 + 8 + 8 * 10 + 10
    s = m["settings"]
    assert (s["model"], s["scan"], s["dataset"], s["backend"]) == ("vmamba", "snake", "digits", "ref")
    assert (s["epochs"], s["batch_size"], s["lr"], s["seed"]) == (2, 64, 0.01, 3)
    assert s["model_options"] == {"hidden": 8}  # parsed as an int
    assert s["augment"] == "shift"
    assert s["command"].startswith("ssm-ref train")
    assert s["blas_threads"] == 1  # the default, recorded with the run
    assert s["malloc"].startswith(("kept", "unchanged:"))  # what ssm_ref._malloc did
    assert s["device"] == "CPU"
    assert (tmp_path / "run" / "curves.png").exists()
    assert (tmp_path / "run" / "checkpoint.npz").exists()
    call = built[0]
    assert call["name"] == "vmamba" and call["seed"] == 3 and call["directions"] == "snake"
    assert call["scan_fn"] is ssm_ref.selective_scan
    assert call["scan_backward_fn"] is ssm_ref.selective_scan_backward
    assert tuple(call["img_size"]) == (8, 8) and call["in_chans"] == 1 and call["n_classes"] == 10
    assert "test accuracy" in capsys.readouterr().out


def test_train_is_deterministic_with_the_seed(built, tmp_path):
    def run(name, seed):
        assert cli.main(_train_args(tmp_path / name, "--seed", str(seed), "--no-plot")) == 0
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        return {k: m[k] for k in ("train_loss", "train_accuracy", "test_accuracy_per_epoch")}
    assert run("a", 1) == run("b", 1)
    assert run("a", 1) != run("c", 2)


def test_train_resume_continues(built, tmp_path):
    out = tmp_path / "r"
    assert cli.main(_train_args(out, "--no-plot")) == 0
    ckpt = out / "checkpoint.npz"
    assert cli.main(_train_args(tmp_path / "r2", "--no-plot", "--epochs", "3",
                                "--resume", str(ckpt))) == 0
    m = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert m["epochs"] == 3 and len(m["train_loss"]) == 3


def test_default_output_directory(built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--no-plot",
                     "--data-opt", "test_fraction=0.5"]) == 0
    assert (tmp_path / "runs" / "vim-digits-seed0" / "metrics.json").exists()


# --------------------------------------------------------------------------- errors
BAD = [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "two"], "--epochs"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--blas-threads", "0"], "--blas-threads"),
    (["train", "--model", "resnet"], "--model"),
    (["train", "--scan", "sideways"], "--scan"),
    (["train", "--dataset", "imagenet"], "--dataset"),
    (["train", "--backend", "tpu"], "--backend"),
    (["train", "--frobnicate"], "unrecognized"),
    (["train", "--model-opt", "no-equals-sign"], "--model-opt"),
    (["train", "--data-opt", "n_train=5"], "n_train"),  # digits has no n_train
    (["train", "--model", "attention", "--scan", "raster"], "no choice of scan order"),
    (["train", "--model", "vim", "--scan", "vmamba_cross"], "multi-direction scheme"),
    (["train", "--resume", "/nonexistent/checkpoint.npz"], "does not exist"),
    (["fly"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize("argv, word", BAD)
def test_bad_options_fail_with_one_line_and_status_2(built, argv, word, capsys, tmp_path):
    rc = cli.main(argv + (["--out", str(tmp_path)] if argv[:1] == ["train"] else []))
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and word in lines[0]
    assert lines[0].startswith("ssm-ref")


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_out_that_cannot_be_a_directory_is_one_line_before_training(where, built, capsys,
                                                                    tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    out = existing if where == "a file" else existing / "run"
    rc = cli.main(_train_args(out))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"ssm-ref train: error: --out {out}: ")
    assert ("names a file, not a directory" if where == "a file" else
            "cannot create or write this directory (Not a directory)") in err[0]
    assert existing.read_text() == "keep me"  # untouched, and nothing was trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_data_set_whose_extra_is_missing_is_one_line(built, capsys, monkeypatch, tmp_path):
    """The digits need scikit-learn (the experiments extra), which a bare wheel lacks: one
    line naming the package to install, not a traceback, and nothing trained."""
    for name in ("sklearn", "sklearn.datasets"):  # as if it were not installed (an earlier
        monkeypatch.setitem(sys.modules, name, None)  # test may have imported it)
    rc = cli.main(_train_args(tmp_path / "run"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("ssm-ref train: error: data set 'digits': ")
    assert "pip install scikit-learn" in err[0]
    assert not (tmp_path / "run").exists()


def test_out_in_an_unwritable_place_is_one_line(built, capsys, monkeypatch, tmp_path):
    """A directory where no file can be created (a read-only mount, or no permission): the
    probe write fails, here made to fail the way the system would."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    rc = cli.main(_train_args(tmp_path / "run"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"ssm-ref train: error: --out {tmp_path / 'run'}: cannot create "
                               "or write this directory (Permission denied)"]


@pytest.mark.parametrize("suite", ["scan", "train"])
def test_bench_out_naming_a_file_is_one_line(suite, capsys, tmp_path):
    existing = tmp_path / "results"
    existing.write_text("")
    assert cli.main(["bench", "--suite", suite, "--quick", "--out", str(existing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ssm-ref bench --suite {suite}: error: --out "
                                               f"{existing}: names a file"), err


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys, tmp_path):
    def interrupted(name, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_build_model", interrupted)
    assert cli.main(_train_args(tmp_path / "run")) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["ssm-ref train: interrupted"]
    monkeypatch.setattr(cli, "_bench_main", lambda suite: interrupted)  # in a benchmark
    assert cli.main(["bench", "--quick"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["ssm-ref bench: interrupted"]


def test_model_build_errors_are_one_line(monkeypatch, capsys, tmp_path):
    def refuse(name, **kw):
        raise ValueError("scan 'hilbert' is not supported by this model")
    monkeypatch.setattr(cli, "_build_model", refuse)
    rc = cli.main(["train", "--scan", "hilbert", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "hilbert" in err[0] and "cannot build model" in err[0]


# --------------------------------------------------------------------------- backends
@pytest.fixture
def fake_fast(monkeypatch):
    """``fast.backends()`` gives ``answer`` (chosen by the test, in the one shape fast
    returns: {name: (available, reason)}); ``fast.scan_functions`` gives partials of
    stand-ins."""
    answer = {"ref": (True, "NumPy reference"), "numba": (True, "Numba on the CPU"),
              "cuda": (False, "no CUDA GPU here")}
    monkeypatch.setattr(fast, "backends", lambda: dict(answer))
    monkeypatch.setattr(fast, "scan_functions", lambda name: (
        functools.partial(lambda *a, **k: ("fwd", k), backend=name),
        functools.partial(lambda *a, **k: ("bwd", k), backend=name)))
    return types.SimpleNamespace(answer=answer, module=fast)


def test_resolve_backend_gives_fast_scan_functions():
    fwd, bwd = cli.resolve_backend("numba")
    assert isinstance(fwd, functools.partial) and fwd.func is fast.selective_scan
    assert bwd.func is fast.selective_scan_backward
    assert fwd.keywords == {"backend": "numba"} and bwd.keywords == {"backend": "numba"}
    want_fwd, want_bwd = fast.scan_functions("numba")  # the fused path and the saved scan
    fused = ("inner_path", "conv2d_silu", "norm_gate", "layer_norm", "rms_norm", "projections",
             "linear")
    for name in fused + ("for_backward",):
        assert getattr(fwd, name) is getattr(want_fwd, name)
    for name in fused + ("from_saved",):
        assert getattr(bwd, name) is getattr(want_bwd, name)
    assert cli.resolve_backend("ref") == (ssm_ref.selective_scan, ssm_ref.selective_scan_backward)


def test_unavailable_backend_is_one_clear_line(fake_fast, built, capsys, tmp_path):
    rc = cli.main(["train", "--backend", "cuda", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "'cuda' is not available here (no CUDA GPU here)" in err[0]
    assert "available: ref, numba" in err[0]
    assert built == []  # nothing was built or trained


def test_cuda_backend_refuses_a_model_that_stays_on_the_host(fake_fast, built, monkeypatch,
                                                              capsys, tmp_path):
    fake_fast.answer["cuda"] = (True, "a GPU")
    monkeypatch.setattr("numba.core.config.ENABLE_CUDASIM", False)
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.asarray = np.asarray  # a "GPU" whose arrays are NumPy arrays: still on the host
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    rc = cli.main(["train", "--backend", "cuda", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot move model TinyMLP to the GPU" in err[0]
    assert built[0]["scan_fn"].keywords == {"backend": "cuda"}


def test_cuda_backend_without_cupy_is_one_clear_line(fake_fast, built, monkeypatch, capsys,
                                                     tmp_path):
    fake_fast.answer["cuda"] = (True, "a GPU")
    monkeypatch.setattr("numba.core.config.ENABLE_CUDASIM", False)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    rc = cli.main(["train", "--backend", "cuda", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs CuPy" in err[0]


def test_backend_status_pairs_as_fast_reports_them(fake_fast, capsys):
    fake_fast.answer.update({"ref": (True, "NumPy"), "numba": (True, "Numba on 2 threads"),
                             "cuda": (False, "no usable CUDA GPU")})
    with pytest.raises(cli.CLIError, match=r"'cuda' is not available here \(no usable CUDA GPU\); "
                                           "available: ref, numba"):
        cli.resolve_backend("cuda")
    assert cli.resolve_backend("numba")[0].keywords == {"backend": "numba"}
    assert cli.main(["backends"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ref     available    NumPy", "numba   available    Numba on 2 threads",
        "cuda    unavailable  no usable CUDA GPU"]


def test_unavailable_numba_is_refused_with_fast_reason(fake_fast):
    fake_fast.answer["numba"] = (False, "fast.numba_cpu cannot be imported: ImportError: x")
    with pytest.raises(cli.CLIError, match=r"'numba' is not available here \(fast.numba_cpu "
                                           r"cannot be imported: ImportError: x\); available: ref$"):
        cli.resolve_backend("numba")


def test_backends_lists_all_three(fake_fast, capsys):
    assert cli.main(["backends"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[:2] for ln in lines] == [["ref", "available"], ["numba", "available"],
                                                ["cuda", "unavailable"]]


def test_backends_listing_is_fast_backends(capsys):
    """The real registry: one line per backend of fast.backends(), in its order, with its
    availability and reason word for word."""
    assert cli.BACKENDS is fast.BACKENDS  # one list of names, fast's
    assert cli.main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    want = fast.backends()
    assert [ln.split()[0] for ln in lines] == list(want) == list(fast.BACKENDS)
    for line, (name, (available, reason)) in zip(lines, want.items()):
        status = "available" if available else "unavailable"
        assert line == f"{name:<8}{status:<13}{reason}"


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", ["train", "bench", "backends"])
def test_help_explains_every_option(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in out, flag
        assert action.help, f"{command} {action.option_strings or action.dest} has no help text"


# --------------------------------------------------------------------------- bench
def _fake_bench_mains(monkeypatch, status=0):
    """Stand-ins for the suites' ``main(argv, prog)`` that log ``[suite, argv, prog]`` and
    exit with ``status`` (as argparse does after --help or a bad option)."""
    log = []

    def make(suite):
        def main(argv, prog):
            log.append([suite, list(argv), prog])
            if status:
                raise SystemExit(status)
        return main
    monkeypatch.setattr(cli, "_bench_main", make)

    def calls():
        got = [entry[:2] for entry in log]
        log.clear()
        return got
    calls.log = log
    return calls


def test_bench_passes_arguments_and_exit_status(monkeypatch):
    calls = _fake_bench_mains(monkeypatch, status=3)
    assert cli.main(["bench", "--", "--help", "--L", "64"]) == 3
    assert calls() == [["scan", ["--help", "--L", "64"]]]
    assert cli.main(["bench", "--quick"]) == 3
    assert calls() == [["scan", ["--quick"]]]


def test_bench_names_the_command_in_the_benchmark_help(monkeypatch):
    calls = _fake_bench_mains(monkeypatch)
    assert cli.main(["bench", "--suite", "train", "--quick"]) == 0
    assert calls.log[0][2] == "ssm-ref bench --suite train"


def test_bench_suite_chooses_the_module(monkeypatch):
    calls = _fake_bench_mains(monkeypatch)
    assert cli.main(["bench", "--quick"]) == 0
    assert calls() == [["scan", ["--quick"]]]  # the default suite
    assert cli.main(["bench", "--suite", "train", "--quick", "--img", "0"]) == 0
    assert calls() == [["train", ["--quick", "--img", "0"]]]
    assert cli.main(["bench", "--quick", "--suite=train", "--", "--suite", "x"]) == 0
    assert calls() == [["train", ["--quick", "--suite", "x"]]]  # after "--": the benchmark's
    assert cli.main(["bench", "--suite", "train", "--help"]) == 0
    assert calls() == [["train", ["--help"]]]  # the benchmark's own help
    assert cli.main(["bench", "--suite", "all", "--quick"]) == 0
    assert calls() == [["scan", ["--quick"]], ["train", ["--quick"]]]


def test_bench_suite_all_stops_at_the_first_failure(monkeypatch):
    calls = _fake_bench_mains(monkeypatch, status=4)
    assert cli.main(["bench", "--suite", "all"]) == 4
    assert calls() == [["scan", []]]


@pytest.mark.parametrize("argv", [["--suite", "nope"], ["--suite"], ["--suite="]])
def test_bench_bad_suite_is_one_line(argv, monkeypatch, capsys):
    calls = _fake_bench_mains(monkeypatch)
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssm-ref bench: error: --suite"), err
    assert "scan, train, all" in err[0] and calls() == []


def test_bench_help_names_the_suites(capsys):
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--suite" in out and "fast.bench.train" in out and "fast.bench.scan" in out


def test_bench_suites_are_modules_of_the_package():
    from fast import bench
    from fast.bench import scan, train
    assert bench.SUITES == {"scan": "fast.bench.scan", "train": "fast.bench.train"}
    assert cli._bench_main("scan") is scan.main and cli._bench_main("train") is train.main


@pytest.mark.parametrize("suite", ["scan", "train"])
def test_bench_help_of_the_real_benchmark(suite, capsys):
    assert cli.main(["bench", "--suite", suite, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ssm-ref bench --suite {suite} ")
    assert "--quick" in out and "--out" in out


def test_bench_bad_option_of_the_real_benchmark_is_status_2(capsys):
    assert cli.main(["bench", "--suite", "scan", "--repeats", "x"]) == 2
    err = capsys.readouterr().err
    assert "ssm-ref bench --suite scan: error: argument --repeats" in err


@pytest.mark.parametrize("args,message", [
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),  # 0 once meant "the default"
    (["--repeats", "-2"], "--repeats must be >= 1, got -2"),
    (["--attention-gb", "0"], "--attention-gb must be > 0, got 0.0"),
    (["--attention-gb", "nan"], "--attention-gb must be > 0, got nan"),
])
def test_bench_scan_refuses_bad_values_before_measuring(args, message, capsys, tmp_path):
    assert cli.main(["bench", "--suite", "scan", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


# --------------------------------------------------------------------------- subprocess
def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ssm_ref.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_bench_runs_outside_the_repository(tmp_path):
    """From a directory that is not the checkout, the benchmark runs (it is a module of the
    package, not a file of the repository) and writes under that directory."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "ssm_ref.cli", "bench", "--suite", "train",
                          "--quick", "--no-plot", "--batch", "8", "--img", "0", "--models", "vim"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "benchmarks" / "results" / "train_cpu_quick.json").read_text())
    assert result["quick"] is True and result["settings"]["models"] == ["vim"]
    assert {r["backend"] for r in result["cpu"]["rows"]} >= {"ref", "numba", "floor"}
    assert "wrote benchmarks/results/train_cpu_quick.json" in res.stdout


def test_sigint_during_training_is_one_line_status_130_and_files_intact(tmp_path):
    """Ctrl-C (SIGINT) in a real run, after its first epoch was written."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "ssm_ref.cli", "train", "--epochs", "1000",
                             "--no-progress", "--no-plot", "--out", str(tmp_path), *MICRO_VIM],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        written = [tmp_path / name for name in ("checkpoint.npz", "metrics.json")]
        while not all(f.exists() for f in written):  # the first epoch is done: both files
            # (the checkpoint is renamed into place first; a signal between the two renames
            # left no metrics.json, which is no damage but not what this test looks at)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["ssm-ref train: interrupted"]
    m = json.loads((tmp_path / "metrics.json").read_text())  # what was written is whole
    assert len(m["train_loss"]) >= 1
    with np.load(tmp_path / "checkpoint.npz") as ckpt:
        assert len(ckpt.files) > 0


def test_module_entry_point_help_and_error():
    ok = _run("--help")
    assert ok.returncode == 0 and "train" in ok.stdout and "bench" in ok.stdout
    bad = _run("train", "--epochs", "-3")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "ssm-ref train: error: argument --epochs: -3 must be >= 1 (see 'ssm-ref train --help')"]
    listed = _run("backends")
    assert listed.returncode == 0 and listed.stdout.startswith("ref")


def test_module_entry_point_trains_a_micro_vim(tmp_path):
    res = _run("train", "--model", "vim", "--dataset", "digits", "--epochs", "1",
               "--data-opt", "test_fraction=0.9", "--no-progress", "--no-plot",
               "--out", str(tmp_path), *MICRO_VIM)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["settings"]["model"] == "vim" and np.isfinite(m["train_loss"][0])


#: Model options that make the Vim of ssm_ref.vision.models tiny (for the subprocess test).
MICRO_VIM = ["--model-opt", "embed_dim=8", "--model-opt", "depth=1", "--model-opt", "d_state=4",
             "--scan", "snake"]


# --------------------------------------------------------------------------- data from files
def test_train_on_mnist_files_with_data_root(tmp_path, rng, capsys):
    """--data-root and --patch-size: a tiny Vim trains on MNIST-format files (28x28)."""
    from test_data_files import write_mnist
    write_mnist(tmp_path, rng, n_train=40, n_test=20)
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "vim", "--dataset", "mnist", "--data-root", str(tmp_path),
                 "--patch-size", "7", "--epochs", "1", "--batch-size", "20", "--no-progress",
                 "--no-plot", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["options"]["root"] == str(tmp_path)
    assert metrics["dataset"]["image_shape"] == [28, 28, 1] and metrics["dataset"]["n_train"] == 40


def test_data_root_refused_for_builtin_sets(capsys, tmp_path):
    assert cli.main(["train", "--dataset", "digits", "--data-root", "/tmp", "--out",
                     str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-root applies to the data sets read from files" in err[0]


def test_resume_with_other_settings_is_one_line_and_status_2(built, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_args(out, "--no-plot")) == 0
    capsys.readouterr()
    rc = cli.main(_train_args(tmp_path / "r2", "--no-plot", "--epochs", "3", "--batch-size", "32",
                              "--resume", str(out / "checkpoint.npz")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("ssm-ref train: error: --resume") and "batch_size" in err[0]
