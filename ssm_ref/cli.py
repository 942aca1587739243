"""The ``ssm-ref`` command line: train a tiny vision model, run the benchmarks, list backends.

Glossary
--------
E        number of epochs
B        batch size
backend  which selective scan the model calls: ``ref`` (``ssm_ref.selective_scan``,
         NumPy), ``numba`` (compiled, CPU) or ``cuda`` (Numba-CUDA on CuPy arrays),
         the last two from the ``fast`` package

Usage::

    ssm-ref train --model vim --dataset digits --backend numba
    ssm-ref train --model vmamba --scan snake --dataset pair --epochs 20 --out runs/snake
    ssm-ref train --model vim --dataset digits --backend cuda     # on a GPU (CuPy)
    ssm-ref bench --quick            # the scan benchmark (fast.bench.scan), quick mode
    ssm-ref bench -- --help          # options after "--" go to the benchmark
    ssm-ref bench --suite train      # one training step per backend (fast.bench.train)
    ssm-ref backends                 # fast.backends(): what runs here, and why not the rest
    ssm-ref predict --model vim_tiny --checkpoint vim_t_midclstok_76p1acc.pth cat.jpg

``python -m ssm_ref.cli ...`` does the same.  Every option is explained by
``ssm-ref <command> --help``; a user error (a bad option, an unavailable backend,
an ``--out`` that names a file or an unwritable place) stops with one line on
stderr and exit status 2, before any work; Ctrl-C stops with one line and exit
status 130.  ``train`` writes ``DIR/metrics.json``,
``DIR/curves.png`` and ``DIR/checkpoint.npz`` (see :func:`ssm_ref.train.train`).
``predict`` classifies one image with a released Vim or VMamba checkpoint
(:data:`ssm_ref.vision.OFFICIAL_MODELS`, :func:`ssm_ref.vision.load_checkpoint`,
:func:`ssm_ref.vision.imagenet_eval_transform`) and prints the top classes.
``train`` also tells glibc's malloc to keep freed memory in the process
(:func:`ssm_ref.train.train` does, and records it in the metrics' settings): the
models' large temporaries are then not faulted back in and zeroed by the kernel at
every step.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import fast
from fast import BACKENDS  # the backend names; which of them work here: fast.backends()
from fast.bench import SUITES  # the benchmarks: fast.bench.scan, fast.bench.train

from .vision import MODELS, OFFICIAL_MODELS, SCAN_ORDERS, SCHEMES

__all__ = ["main", "build_parser", "resolve_backend", "output_dir", "OneLineParser", "BACKENDS",
           "TRAIN_DEFAULTS"]

#: Defaults of ``ssm-ref train``, chosen so that ``ssm-ref train --model vim --dataset digits
#: --backend numba`` reaches >= 95% test accuracy on digits within 5 minutes on 2 CPU cores.
#: Measured (TinyVim defaults: 14 506 parameters; 2 shared cores, other jobs running):
#: seed 0: 95.8% in 50 s, seed 1: 98.1% in 34 s, seed 2: 97.8% in 39 s.  lr 3e-3 for
#: 10 epochs underfits (92.5%); the model fits the training set by epoch 12 at lr 1e-2.
TRAIN_DEFAULTS = {
    "model": "vim",
    "dataset": "digits",
    "epochs": 20,
    "batch_size": 64,
    "lr": 1e-2,
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "clip_norm": 1.0,
    "backend": "ref",
    "seed": 0,
}


class CLIError(Exception):
    """A problem with the user's options, reported as one line with exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``prog: error: message (see 'prog --help')``,
    and exit status 2 (the benchmarks of ``fast.bench`` use it too)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def output_dir(path, flag="--out"):
    """Make ``path`` a directory a run can write into, before the run starts.

    Parameters
    ----------
    path : str or Path
        The directory; created with its parents when missing.
    flag : str
        The option that named it, for the message.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        ``path`` names an existing file, or the directory cannot be created or
        written into (the message names ``flag``, the path and the system's reason).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     output_dir(f.name)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: --out /...: names a file, not a directory
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: names a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # can a file be written there?
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot create or write this directory "
                         f"({exc.strerror or type(exc).__name__})") from None
    return path


# ---------------------------------------------------------------------------
# The package's registries: ssm_ref.vision (models, scans), ssm_ref.data, fast (backends)
# ---------------------------------------------------------------------------

def _scan_names():
    """Every ``--scan``: the single scan orders and the multi-direction schemes."""
    return tuple(SCAN_ORDERS) + tuple(SCHEMES)


def _dataset_names():
    from .data import DATASETS  # noqa: PLC0415
    return tuple(DATASETS)


def resolve_backend(name):
    """The ``(scan_fn, scan_backward_fn)`` pair of a backend, or raise one clear error.

    Parameters
    ----------
    name : {"ref", "numba", "cuda"}
        ``"ref"`` gives :func:`ssm_ref.selective_scan` and
        :func:`ssm_ref.selective_scan_backward`; the others
        :func:`fast.scan_functions` of the name:
        ``functools.partial(fast.selective_scan, backend=name)`` and the same
        for ``fast.selective_scan_backward``; the ``"numba"`` pair also carries
        the fused inner path, which the Mamba and Vim blocks then run.

    Returns
    -------
    scan_fn, scan_backward_fn : callable

    Raises
    ------
    CLIError
        Unknown name, or the backend not available on this machine (the reason
        from :func:`fast.backends`; never a silent fallback to another backend).

    Examples
    --------
    >>> fwd, bwd = resolve_backend("ref")
    >>> fwd.__name__, bwd.__name__
    ('selective_scan', 'selective_scan_backward')
    """
    if name not in BACKENDS:
        raise CLIError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "ref":
        from .selective import selective_scan, selective_scan_backward  # noqa: PLC0415
        return selective_scan, selective_scan_backward
    status = fast.backends()  # {name: (available, reason)}
    available, reason = status[name]
    if not available:
        have = ", ".join(b for b, (ok, _) in status.items() if ok)
        raise CLIError(f"backend {name!r} is not available here ({reason}); available: {have}")
    return fast.scan_functions(name)  # numba's pair carries the fused inner path


def _parse_options(items, flag):
    """``["dim=32", "name=raster"]`` -> ``{"dim": 32, "name": "raster"}``."""
    out = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"{flag} {item!r} must look like KEY=VALUE with KEY a Python name")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text  # a bare word: keep it as a string
    return out


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------

def _int_at_least(low):
    """An argparse ``type``: an integer ``>= low``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a finite number > 0")
    return value


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    return value


def build_parser():
    """The argparse parser of ``ssm-ref`` with its four subcommands."""
    d = TRAIN_DEFAULTS
    parser = OneLineParser(
        prog="ssm-ref",
        description="ssm-ref: train tiny vision state-space models, run the scan benchmarks, "
                    "list the scan backends, classify an image with a released model.",
        epilog="Run 'ssm-ref COMMAND --help' for the options of each command.")
    from . import __version__  # noqa: PLC0415
    parser.add_argument("--version", action="version", version=f"ssm-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # -- train -------------------------------------------------------------
    models = tuple(MODELS)
    scans = _scan_names()
    tr = sub.add_parser(
        "train", help="train a tiny vision model and write metrics.json, curves.png, checkpoint.npz",
        description="Train a tiny vision model (NumPy; the selective scan from the chosen backend) "
                    "with AdamW, a warmup + cosine learning-rate schedule and gradient clipping. "
                    "Writes OUT/metrics.json (test accuracy, per-epoch loss and accuracy, wall "
                    "time, parameters, settings), OUT/curves.png and OUT/checkpoint.npz.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--model", default=d["model"], choices=models,
                    help="model architecture: " + ", ".join(models))
    tr.add_argument("--scan", default=None, metavar="ORDER", choices=scans,
                    help="scan order of vim (a single order), or scan order / multi-direction "
                         "scheme of the VMamba family (vmamba, localmamba, efficientvmamba); "
                         "default: the model's own (vim: raster, vmamba: vmamba_cross). "
                         "Names: " + ", ".join(scans))
    tr.add_argument("--dataset", default=d["dataset"], choices=_dataset_names(),
                    help="data set: digits (sklearn 8x8 digits, 10 classes) or a synthetic "
                         "long-range task (pair: same rows; pair-column: same columns)")
    tr.add_argument("--epochs", type=_positive_int, default=d["epochs"], metavar="E",
                    help="number of passes over the training images")
    tr.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], metavar="B",
                    help="images per optimisation step")
    tr.add_argument("--lr", type=_positive_float, default=d["lr"],
                    help="peak learning rate of the warmup + cosine schedule")
    tr.add_argument("--weight-decay", type=_nonnegative_float, default=d["weight_decay"],
                    help="decoupled AdamW weight decay (never applied to A_log, D and the "
                         "model's other no-weight-decay parameters)")
    tr.add_argument("--warmup-epochs", type=_nonnegative_float, default=d["warmup_epochs"],
                    help="length of the linear learning-rate warmup, in epochs")
    tr.add_argument("--clip-norm", type=_nonnegative_float, default=d["clip_norm"],
                    help="clip the global gradient norm to this value (0 turns clipping off)")
    tr.add_argument("--augment", default="none", choices=("none", "shift"),
                    help="training-time augmentation: shift moves each image by up to one "
                         "pixel (slower to fit; not for the pair tasks, whose marks may touch "
                         "the border)")
    tr.add_argument("--backend", default=d["backend"], choices=BACKENDS,
                    help="selective scan implementation: ref (NumPy reference), numba (compiled "
                         "CPU), cuda (GPU, CuPy arrays); see 'ssm-ref backends'")
    tr.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                    help="precision of parameters, activations, gradients and optimiser state: "
                         "float64 (the reference) or float32 (faster, with --backend numba "
                         "the scan runs in float32 too)")
    tr.add_argument("--seed", type=_nonnegative_int, default=d["seed"], metavar="S",
                    help="seeds the model initialisation, the data split / generation and the "
                         "batch order")
    tr.add_argument("--out", default=None, metavar="DIR",
                    help="output directory (default: runs/MODEL-DATASET[-SCAN]-seedS)")
    tr.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="extra model option, repeatable: a field of the model's config or "
                         "dtype (e.g. --model-opt embed_dim=32 --model-opt depth=2 --model-opt "
                         "dtype=float32); the images follow the parameters' dtype")
    tr.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="extra data set option, repeatable (e.g. --data-opt n_train=1000 "
                         "--data-opt size=32)")
    tr.add_argument("--data-root", default=None, metavar="DIR",
                    help="folder holding a data set read from files (mnist, fashion-mnist: the "
                         "IDX files; cifar10: cifar-10-batches-bin/; imagefolder: CLASS/*.png)")
    tr.add_argument("--download", action="store_true",
                    help="fetch the files of mnist, fashion-mnist or cifar10 into --data-root "
                         "(SHA-256 checked) when they are not there")
    tr.add_argument("--patch-size", type=_positive_int, default=None, metavar="P",
                    help="patch size of the model (default: the model's, 2); e.g. 4 for 28x28 "
                         "or 32x32 images")
    tr.add_argument("--resume", default=None, metavar="CHECKPOINT",
                    help="continue from a checkpoint.npz written by an earlier run with the "
                         "same settings")
    tr.add_argument("--no-progress", action="store_true",
                    help="no progress bar and no per-epoch lines")
    tr.add_argument("--no-plot", action="store_true", help="do not write curves.png")
    tr.add_argument("--blas-threads", type=_positive_int, default=1, metavar="N",
                    help="threads for NumPy's BLAS during training (default 1: the tiny "
                         "matrix products gain nothing from more, and BLAS threads compete "
                         "with the compiled scan's threads on small machines)")

    # -- bench -------------------------------------------------------------
    be = sub.add_parser(
        "bench", help="run the benchmarks (fast.bench.scan, fast.bench.train)",
        description="Run a benchmark of the installed package: the selective scan "
                    "(fast.bench.scan, the default) or one training step of the tiny vision "
                    "models per backend (fast.bench.train). Results go to "
                    "benchmarks/results under the current directory unless --out says "
                    "otherwise. Every argument after 'bench' except --suite is passed to the "
                    "benchmark unchanged, and a lone -h/--help shows this text; reach a "
                    "benchmark's own help with 'ssm-ref bench -- --help' or "
                    "'ssm-ref bench --suite train --help'.")
    be.add_argument("--suite", choices=tuple(SUITES) + ("all",), default="scan",
                    help="which benchmark: scan (fast.bench.scan), train (fast.bench.train), "
                         "or all (both in turn, each given the same ARGS, so use only the "
                         "options they share: --quick, --repeats, --out, --no-plot); it must "
                         "come before a '--'")
    be.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS",
                    help="arguments for the benchmark")

    # -- backends ----------------------------------------------------------
    sub.add_parser(
        "backends", help="list the selective-scan backends and whether each works here",
        description="List the selective-scan backends (ref, numba, cuda), whether each is "
                    "available on this machine and why (fast.backends()).")

    # -- predict -----------------------------------------------------------
    official = tuple(OFFICIAL_MODELS)
    pr = sub.add_parser(
        "predict", help="classify an image with a released Vim or VMamba checkpoint",
        description="Classify one image (PNG, JPEG, anything Pillow reads) with an official "
                    "Vim or VMamba ImageNet checkpoint (.pth or .safetensors). The image goes "
                    "through the official eval transform (shorter side to img_size/0.875, "
                    "bicubic; centre crop img_size; ImageNet mean and std); the top classes "
                    "are printed as 'rank class probability [name]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pr.add_argument("image", metavar="IMAGE", help="the image file")
    pr.add_argument("--model", required=True, choices=official,
                    help="the architecture of the checkpoint: " + ", ".join(official))
    pr.add_argument("--checkpoint", required=True, metavar="PATH",
                    help="the weights: an official .pth (read without PyTorch) or .safetensors")
    pr.add_argument("--config", default=None, metavar="JSON",
                    help="a JSON file of constructor keyword arguments that replace the "
                         "preset's (an object, or one with a 'kwargs' object), for checkpoints "
                         "of other sizes")
    pr.add_argument("--names", default=None, metavar="FILE",
                    help="class names, one per line in class order (e.g. the 1000 ImageNet "
                         "classes); without it only indices are printed")
    pr.add_argument("--top", type=_int_at_least(1), default=5, help="how many classes to print")
    return parser


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

def _build_model(name, **kwargs):
    """``ssm_ref.vision.build_model(name, **kwargs)`` (a seam for tests)."""
    from .vision import build_model  # noqa: PLC0415
    return build_model(name, **kwargs)


def _cmd_train(args):
    from .data import DATASETS, load_dataset  # noqa: PLC0415
    from .train import train  # noqa: PLC0415

    scan_fn, scan_backward_fn = resolve_backend(args.backend)
    model_opts = _parse_options(args.model_opt, "--model-opt")
    data_opts = _parse_options(args.data_opt, "--data-opt")
    spec = DATASETS[args.dataset]
    model_kwargs = {"seed": args.seed, "scan_fn": scan_fn, "scan_backward_fn": scan_backward_fn,
                    **model_opts}
    if args.scan is not None:
        model_kwargs[_scan_keyword(args.model, args.scan)] = args.scan
    if args.patch_size is not None:
        model_kwargs["patch_size"] = args.patch_size
    for flag, key, value in (("--data-root", "root", args.data_root),
                             ("--download", "download", args.download or None)):
        if value is None:
            continue
        if key not in spec.options:
            file_sets = ", ".join(n for n, s in DATASETS.items() if key in s.options)
            raise CLIError(f"{flag} applies to the data sets read from files ({file_sets}), "
                           f"not to {args.dataset!r}")
        data_opts[key] = value
    unknown = sorted(set(data_opts) - set(spec.options))
    if unknown:
        raise CLIError(f"--data-opt {', '.join(unknown)} is not an option of data set "
                       f"{args.dataset!r} (it accepts: {', '.join(sorted(spec.options))})")
    try:
        dataset = load_dataset(args.dataset, seed=args.seed, **data_opts)
    except (ValueError, TypeError, ImportError) as exc:  # ImportError: an extra not installed
        raise CLIError(f"data set {args.dataset!r}: {exc}") from exc
    H, W, C = dataset.image_shape
    model_kwargs.setdefault("img_size", (H, W))
    model_kwargs.setdefault("in_chans", C)
    model_kwargs.setdefault("n_classes", dataset.n_classes)
    try:
        model = _build_model(args.model, **model_kwargs)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"cannot build model {args.model!r} with {_show(model_kwargs)}: {exc}") from exc
    dtype = next(iter(model.params.values())).dtype
    if dataset.x_train.dtype != dtype:  # the images follow the model's precision
        dataset.x_train = dataset.x_train.astype(dtype)
        dataset.x_test = dataset.x_test.astype(dtype)
    if args.resume is not None:  # a wrong or mismatched checkpoint is one line, before training
        from .train import load_checkpoint  # noqa: PLC0415
        try:
            load_checkpoint(args.resume, model)
        except (OSError, KeyError, ValueError) as exc:
            raise CLIError(f"--resume {args.resume}: {type(exc).__name__}: {exc}") from exc
    device = _to_gpu(model) if args.backend == "cuda" else "CPU"

    out = args.out
    if out is None:
        scan = f"-{args.scan}" if args.scan else ""
        out = os.path.join("runs", f"{args.model}-{args.dataset}{scan}-seed{args.seed}")
    try:  # a file or an unwritable place: one line now, not a traceback after training
        output_dir(out)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    settings = {"model": args.model, "scan": args.scan, "dataset": args.dataset,
                "backend": args.backend, "device": device, "model_options": model_opts, "data_options": data_opts,
                "dtype": args.dtype,
                "blas_threads": args.blas_threads,
                "command": "ssm-ref " + " ".join(args.argv)}
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        try:
            metrics = train(model, dataset, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                            out_dir=out, progress=not args.no_progress,
                            clip_norm=args.clip_norm or None, warmup_epochs=args.warmup_epochs,
                            augment=args.augment, resume=args.resume, plot=not args.no_plot,
                            settings=settings,
                            dtype=None if args.dtype == "float64" else args.dtype)
        except ValueError as exc:  # a checkpoint from a run with other settings, or whose
            # optimiser state is bad (checked only once train builds the optimiser): one line
            if not (str(exc).startswith("resume:")
                    or str(exc).startswith(f"checkpoint {str(args.resume)!r}")):
                raise
            raise CLIError(f"--resume {args.resume}: {exc}") from None
    print(f"{args.model} on {args.dataset} ({args.backend}, {device}): test accuracy "
          f"{metrics['test_accuracy']:.4f} after {metrics['epochs']} epochs, "
          f"{metrics['wall_time_s']:.1f} s, {metrics['n_params']} parameters; "
          f"wrote {os.path.join(out, 'metrics.json')}")
    return 0


#: How each model family takes ``--scan``: Vim flattens its patches in one scan order
#: (``scan``); the VMamba family takes a multi-direction scheme or a single order
#: (``directions``).  The other models have a fixed scan (PlainMamba's four snakes) or none.
_SCAN_KEYWORD = {"vim": "scan", "vmamba": "directions", "localmamba": "directions",
                 "efficientvmamba": "directions"}


def _scan_keyword(model, scan):
    key = _SCAN_KEYWORD.get(model)
    if key is None:
        raise CLIError(f"model {model!r} has no choice of scan order; --scan works with "
                       f"{', '.join(_SCAN_KEYWORD)}")
    if key == "scan" and scan in SCHEMES:
        raise CLIError(f"--scan {scan} is a multi-direction scheme; model {model!r} takes a single "
                       "scan order (raster, snake, hilbert, ...); schemes work with the VMamba "
                       "family (vmamba, localmamba, efficientvmamba)")
    return key


def _show(kwargs):
    """Model options for an error message (functions by name)."""
    parts = []
    for key, value in kwargs.items():
        if callable(value):
            value = getattr(value, "__name__", None) or type(value).__name__
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={value!r}")
    return "{" + ", ".join(parts) + "}"


def _to_gpu(model):
    """Move the model's parameters to the GPU as CuPy arrays (``--backend cuda``); the device name.

    Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, what CI runs)
    there is no GPU memory: the simulated kernels read NumPy arrays, so the
    parameters stay NumPy and the scan runs in the simulator.  Refuses (one
    line) when the parameters do not end up on the device, rather than copy
    activations between host and device at every step.
    """
    from numba.core import config  # noqa: PLC0415 - numba is a dependency

    from ._xp import is_cupy  # noqa: PLC0415

    if config.ENABLE_CUDASIM:
        return "CUDA simulator (NumPy arrays)"
    try:
        import cupy  # noqa: PLC0415
    except ImportError as exc:
        raise CLIError("--backend cuda needs CuPy: pip install ssm-ref[gpu]") from exc
    try:
        model.to(cupy)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise CLIError(f"cannot move model {type(model).__name__} to the GPU: "
                       f"{type(exc).__name__}: {exc}") from exc
    on_host = [k for k, v in model.params.items() if not is_cupy(v)]
    if on_host:
        raise CLIError(f"model {type(model).__name__} kept parameter {on_host[0]!r} on the "
                       "host; --backend cuda is refused rather than copying to the host at "
                       "every step")
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _split_suite(argv):
    """``(suite, rest)``: take ``--suite NAME`` / ``--suite=NAME`` from the arguments before
    a ``--``; everything else (the ``--`` dropped) goes to the benchmark unchanged."""
    suite, rest, i = "scan", [], 0
    choices = (*SUITES, "all")
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i + 1:]
            break
        if arg == "--suite" or arg.startswith("--suite="):
            if arg == "--suite":
                if i + 1 == len(argv):
                    raise CLIError("--suite needs a value: " + ", ".join(choices))
                i += 1
                suite = argv[i]
            else:
                suite = arg.partition("=")[2]
            if suite not in choices:
                raise CLIError(f"--suite {suite!r} is not one of {', '.join(choices)}")
        else:
            rest.append(arg)
        i += 1
    return suite, rest


def _bench_main(suite):
    """The ``main(argv, prog)`` of a benchmark suite's module (a seam for tests)."""
    return importlib.import_module(SUITES[suite]).main


def _cmd_bench(args):
    suite, rest = _split_suite(list(args.bench_args))
    status = 0
    for name in (SUITES if suite == "all" else (suite,)):
        status = _run_bench(_bench_main(name), rest, prog=f"ssm-ref bench --suite {name}")
        if status != 0:  # the first failure stops 'all'
            break
    return status


def _run_bench(bench_main, rest, prog):
    """Run one benchmark; its exit status (0, or what its SystemExit says: 0 after --help,
    2 after a bad option, which argparse has already reported)."""
    try:
        bench_main(rest, prog=prog)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _cmd_backends(args):
    for name, (available, reason) in fast.backends().items():
        print(f"{name:<8}{'available' if available else 'unavailable':<13}{reason}")
    return 0


def _read_config(path):
    """The constructor keyword arguments of ``--config`` (an object, or its ``kwargs``)."""
    import json  # noqa: PLC0415
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as exc:
        raise CLIError(f"--config {path}: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:
        raise CLIError(f"--config {path}: not JSON ({exc})") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("kwargs"), dict):
        cfg = cfg["kwargs"]
    if not isinstance(cfg, dict):
        raise CLIError(f"--config {path}: expected a JSON object of keyword arguments")
    return cfg


def _read_names(path, n_classes):
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f]
    except OSError as exc:
        raise CLIError(f"--names {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise CLIError(f"--names {path}: not a UTF-8 text file") from None
    while names and not names[-1].strip():
        names.pop()
    if len(names) != n_classes:
        raise CLIError(f"--names {path} has {len(names)} names but the model has {n_classes} "
                       "classes (one name per line, in class order)")
    return names


def _cmd_predict(args):
    from .vision import imagenet_eval_transform, load_checkpoint, top_k  # noqa: PLC0415
    try:
        from PIL import Image, UnidentifiedImageError  # noqa: PLC0415
    except ImportError:
        raise CLIError("predict needs Pillow to read images: pip install pillow") from None
    cls, preset = OFFICIAL_MODELS[args.model]
    kwargs = _read_config(args.config) if args.config else {}
    try:
        model = cls(**kwargs) if args.config else preset()
    except (TypeError, ValueError) as exc:
        raise CLIError(f"cannot build {args.model} from --config {args.config}: {exc}") from None
    names = _read_names(args.names, model.num_classes) if args.names else None
    try:
        state = load_checkpoint(args.checkpoint)
    except (ImportError, ValueError, TypeError, OSError) as exc:
        raise CLIError(f"--checkpoint {args.checkpoint}: {exc}") from None
    except Exception as exc:  # a corrupt file: the reader's own error, in one line
        raise CLIError(f"--checkpoint {args.checkpoint}: cannot read it "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                       ) from None
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if len(msg) > 400:  # e.g. the 400 keys of a model of another depth
            msg = msg[:400] + f"... ({len(msg) - 400} more characters)"
        raise CLIError(f"--checkpoint {args.checkpoint} does not fit {args.model}"
                       f"{' with --config' if args.config else ''}: {msg}") from None
    try:
        with Image.open(args.image) as img:
            x = imagenet_eval_transform(img, img_size=model.img_size)
    except FileNotFoundError:
        raise CLIError(f"IMAGE {args.image}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CLIError(f"IMAGE {args.image}: not an image Pillow can read ({exc})") from None
    except ValueError as exc:
        raise CLIError(f"IMAGE {args.image}: {exc}") from None
    logits = model(x)[0]
    for rank, (idx, prob) in enumerate(top_k(logits, min(args.top, model.num_classes)), 1):
        name = f"  {names[idx]}" if names else ""
        print(f"{rank}  {idx:>5}  {prob:.4f}{name}")
    return 0


def main(argv=None):
    """Run the ``ssm-ref`` command line; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (``sys.argv[1:]`` when None).

    Returns
    -------
    int
        0 on success (and after ``--help``); 2 after a user error (one line on
        stderr); 130 after Ctrl-C (one line); a benchmark's own status for ``bench``
        (2 after a bad option of the benchmark, one line too).

    Examples
    --------
    >>> main(["backends"])  # doctest: +ELLIPSIS
    ref     available    ...
    numba   available    ...
    0
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and argv[1:2] not in (["-h"], ["--help"]):
        # everything after "bench" belongs to the benchmark script (argparse's REMAINDER
        # does not capture a leading option such as "--quick")
        args = argparse.Namespace(command="bench", bench_args=argv[1:], argv=argv)
        return _run_command(args)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a bad option (2, one line printed)
        return exc.code if isinstance(exc.code, int) else 0
    args.argv = argv
    return _run_command(args)


def _run_command(args):
    commands = {"train": _cmd_train, "bench": _cmd_bench, "backends": _cmd_backends,
                "predict": _cmd_predict}
    prog = f"ssm-ref {args.command}"
    try:
        return commands[args.command](args)
    except CLIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's status for SIGINT
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
