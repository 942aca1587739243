"""A small, readable training loop for the tiny vision models, with metrics and checkpoints.

Glossary
--------
B        batch size
H, W, C  image height, width, channels (images are (B, H, W, C), channels last)
K        number of classes
E        number of epochs; ``S`` optimisation steps per epoch

The model interface this loop relies on (the tiny models of
``ssm_ref.vision.models`` implement it; any object that does can be trained):

``model.params``                 mapping name -> array, updated in place by the optimiser
``model.forward(x, return_cache=True)``   -> ``(logits (B, K), cache)``
``model.forward(x)``             -> ``logits`` (evaluation)
``model.backward(dlogits, cache)``        -> grads, a dict with the keys of ``params``
``model.state_dict()`` / ``model.load_state_dict(sd)``
``model.n_params()``, ``model.no_weight_decay()`` (names never decayed), ``model.config``

One step: (augment,) forward, softmax cross-entropy, backward, clip the global
gradient norm, AdamW step at the learning rate of a warmup + cosine schedule.  Each
epoch visits the training images in an order drawn from ``(seed, epoch)``, so a
run is reproducible bit for bit and a run resumed from a checkpoint continues
exactly as if it had never stopped (tested) -- on the CPU.  On a GPU the CUDA
scan's backward and the scatter-adds (``cupy.add.at``) sum with atomics, in an
order that changes from run to run, so runs agree only to rounding.

Outputs in ``out_dir`` (when given):

``metrics.json``     final and per-epoch figures, timing, parameter count, settings
``curves.png``       loss and accuracy per epoch (matplotlib, Agg canvas)
``checkpoint.npz``   model state dict + optimiser state + epoch + history,
                     rewritten after every epoch; :func:`load_checkpoint` restores it.

``tqdm`` (progress bar) and ``matplotlib`` (curves) are optional extras,
imported only when used.  On CuPy parameters the loop moves each batch to the
GPU and keeps losses and counts on the device until the end of the epoch.  The
labels are checked against the model's classes once, on the host, before
training: inside a step on a GPU an out-of-range label would not raise (CuPy
wraps out-of-bounds indices) but silently give a wrong loss.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import time
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import _malloc
from ._malloc import keep_freed_memory
from ._validation import check_bool, check_choice, check_positive_int, check_positive_scalar
from ._xp import array_module, to_host
from .data import AUGMENTATIONS, ImageDataset, iterate_batches, load_dataset
from .optim import OPTIMIZERS, clip_grad_norm, cosine_lr, softmax_cross_entropy

__all__ = [
    "train",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
    "plot_curves",
    "to_jsonable",
    "keep_freed_memory",
    "CHECKPOINT_VERSION",
]

#: Format version written into every checkpoint.
CHECKPOINT_VERSION = 1
#: the files a run writes into ``out_dir`` (their ``.tmp`` leftovers are removed at its start)
RUN_FILES = ("checkpoint.npz", "metrics.json", "curves.png")

#: The precisions ``train(..., dtype=)`` offers (float64: the reference; float32: faster).
DTYPES = ("float64", "float32")

_MODEL_PREFIX = "model/"
_OPTIM_PREFIX = "optim/"


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def to_jsonable(obj, *, finite=False):
    """A copy of ``obj`` that ``json.dump`` accepts (configs, settings, results).

    Parameters
    ----------
    obj : object
        Nested dicts, lists and tuples of numbers, strings, NumPy scalars and
        arrays, dtypes, dataclasses and callables.
    finite : bool, optional
        If True, NaN and infinite floats become ``None`` (strict JSON, as the
        experiment result files need); by default they stay floats, which
        ``json.dump`` writes as ``NaN`` / ``Infinity``.

    Returns
    -------
    object
        Dict keys become strings, tuples and arrays lists, NumPy scalars Python
        numbers, dataclasses dicts of their fields, dtypes and NumPy scalar
        types their name, callables ``"module.qualname"``; anything else its
        ``str``.

    Examples
    --------
    >>> import numpy as np
    >>> to_jsonable({1: (np.float32(0.5), np.arange(2)), "dtype": np.float64})
    {'1': [0.5, [0, 1]], 'dtype': 'float64'}
    >>> to_jsonable([float("nan"), 1.0], finite=True)
    [None, 1.0]
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name), finite=finite)
                for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, finite=finite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, finite=finite) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), finite=finite)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return None if finite and not math.isfinite(f) else f
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, np.dtype):
        return obj.name
    if isinstance(obj, type) and issubclass(obj, np.generic):
        return np.dtype(obj).name
    if callable(obj):
        mod = getattr(obj, "__module__", None) or ""
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
        return f"{mod}.{name}" if mod else name
    return str(obj)


def _check_model(model):
    for attr in ("params", "forward", "backward", "state_dict", "load_state_dict"):
        if not hasattr(model, attr):
            raise TypeError(f"Parameter model ({type(model).__name__}) has no attribute {attr!r}; "
                            "see the model interface in the docstring of ssm_ref.train")
    if not isinstance(model.params, Mapping) or not model.params:
        raise TypeError("Parameter model.params must be a non-empty mapping name -> array")


def _as_dataset(dataset, seed):
    if isinstance(dataset, str):
        return load_dataset(dataset, seed=seed)
    if isinstance(dataset, ImageDataset):
        return dataset
    if isinstance(dataset, (tuple, list)) and len(dataset) == 4:
        xtr, ytr, xte, yte = dataset
        ytr, yte = np.asarray(ytr), np.asarray(yte)
        for name, y in (("y_train", ytr), ("y_test", yte)):
            if y.ndim != 1 or y.dtype.kind not in "iu":
                raise ValueError(f"dataset {name} has shape {y.shape} and dtype {y.dtype}; "
                                 "expected 1-D integer class labels")
            if y.size == 0:
                raise ValueError(f"dataset {name} is empty (shape {y.shape}); expected at least "
                                 "one example")
        for name, x, y in (("x_train", xtr, ytr), ("x_test", xte, yte)):
            if len(x) != len(y):
                raise ValueError(f"dataset {name} has {len(x)} images but y_{name[2:]} has "
                                 f"{len(y)} labels; expected one label per image")
        n_classes = int(max(ytr.max(), yte.max())) + 1
        chance = float(np.bincount(yte, minlength=n_classes).max() / len(yte))
        return ImageDataset("custom", xtr, ytr, xte, yte, n_classes, chance)
    raise TypeError("Parameter dataset must be a data set name, an ImageDataset or a tuple "
                    f"(x_train, y_train, x_test, y_test); got {type(dataset).__name__}")


def _check_labels(ds, model):
    """Labels must index the model's outputs (``config.n_classes``, when it has one)."""
    n_out = getattr(getattr(model, "config", None), "n_classes", None)
    for name, y in (("y_train", ds.y_train), ("y_test", ds.y_test)):
        y = np.asarray(y)
        if y.size and (y.min() < 0 or (n_out is not None and y.max() >= n_out)):
            raise ValueError(f"dataset {name} has labels in [{y.min()}, {y.max()}] but the "
                             f"model has {n_out} classes (0 .. {n_out - 1})")


def _model_info(model):
    cfg = getattr(model, "config", None)
    n_params = model.n_params() if hasattr(model, "n_params") else int(
        sum(int(np.prod(p.shape)) for p in model.params.values()))
    return {"class": type(model).__name__, "config": to_jsonable(cfg), "n_params": int(n_params)}


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def evaluate(model, x, y, batch_size=256):
    """Mean cross-entropy loss and accuracy of ``model`` on ``(x, y)``.

    Parameters
    ----------
    model : object with ``forward(x) -> logits (B, K)``
    x : ndarray, shape (n, H, W, C)
    y : ndarray of int, shape (n,)
    batch_size : int, optional
        Images per forward call (memory only; the result does not depend on it
        beyond rounding).

    Returns
    -------
    loss : float
    accuracy : float
        Share of images whose largest logit is the true class.

    Examples
    --------
    >>> import numpy as np
    >>> class Constant:                        # always predicts class 1
    ...     def forward(self, x):
    ...         return np.tile([0.0, 1.0], (len(x), 1))
    >>> loss, acc = evaluate(Constant(), np.zeros((4, 2, 2, 1)), np.array([1, 1, 0, 1]))
    >>> acc
    0.75
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"Parameters x and y hold {len(x)} and {len(y)} examples; "
                         "they must match and be non-empty")
    loss_sum, correct = 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        xb, yb = _like_params(model, xb, yb)
        logits = model.forward(xb)  # (b, K)
        loss, _ = softmax_cross_entropy(logits, yb)
        loss_sum = loss_sum + loss * len(yb)
        correct = correct + (logits.argmax(axis=1) == yb).sum()
    return float(loss_sum) / len(y), float(correct) / len(y)


def _like_params(model, xb, yb):
    """Move a batch to the array module of the model's parameters (CuPy on a GPU)."""
    params = getattr(model, "params", None)
    if params:
        xp = array_module(next(iter(params.values())))
        if xp is not np:
            return xp.asarray(xb), xp.asarray(yb)
    return xb, yb


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def save_checkpoint(path, model, optimizer, epoch, history=None, settings=None):
    """Write model weights, optimiser state and progress to one ``.npz`` file.

    Parameters
    ----------
    path : str or Path
    model : object with ``state_dict()``
        Its state dict names are kept as they are (the Mamba blocks use the
        official ``mamba_ssm`` names) under the prefix ``model/``.
    optimizer : AdamW or SGD or None
        Its ``state_dict()`` is stored under ``optim/``.
    epoch : int
        Number of completed epochs.
    history : dict, optional
        The per-epoch metrics so far (stored as JSON text).
    settings : dict, optional
        The training settings (stored as JSON text).

    Notes
    -----
    The file is written to ``path + ".tmp"`` in the same directory, flushed
    to disk (``fsync``) and renamed over ``path``, and the directory is synced
    too, so an interrupted write never leaves a truncated checkpoint behind; a
    temporary left by a killed process is removed at the next save or load.
    Everything is stored as plain arrays: ``np.load(path)`` needs no pickle.
    """
    arrays = {"version": np.array(CHECKPOINT_VERSION), "epoch": np.array(int(epoch))}
    for name, value in model.state_dict().items():
        arrays[_MODEL_PREFIX + name] = to_host(value)
    if optimizer is not None:
        arrays["optimizer_class"] = np.array(type(optimizer).__name__)
        for name, value in optimizer.state_dict().items():
            arrays[_OPTIM_PREFIX + name] = to_host(value)
    arrays["history_json"] = np.array(json.dumps(to_jsonable(history or {})))
    arrays["settings_json"] = np.array(json.dumps(to_jsonable(settings or {})))
    path = Path(path)
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return path


def load_checkpoint(path, model, optimizer=None):
    """Restore a checkpoint written by :func:`save_checkpoint` (or by :func:`train`).

    Parameters
    ----------
    path : str or Path
    model : object with ``load_state_dict(sd)``
        Receives the stored weights, as arrays of the module of its current
        parameters (CuPy stays CuPy).
    optimizer : AdamW or SGD, optional
        Receives the stored optimiser state; it must be of the stored class.

    Returns
    -------
    dict
        ``{"epoch": completed epochs, "history": per-epoch metrics,
        "settings": training settings}``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a checkpoint, is truncated or corrupt, declares a
        member larger than its shape and dtype need, has an unknown
        ``version``, a negative or non-integer ``epoch``, or the optimiser
        class differs or its state is bad (a moment whose shape is not its
        parameter's, non-finite values, a negative step count, betas outside
        [0, 1)); the message names the entry.
    """
    data = _read_checkpoint(path)
    _check_model_entries(data, model, path)
    if optimizer is not None:  # checked and restored before the weights change
        _restore_optimizer(data, optimizer, path)
    _restore_model(data, model)
    return {"epoch": int(data["epoch"]),
            "history": json.loads(str(data["history_json"])),
            "settings": json.loads(str(data["settings_json"]))}


def _read_checkpoint(path):
    path = Path(path)
    _remove_stale_tmp(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = _read_npz(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} is truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from exc
    if "version" not in data or "epoch" not in data:
        raise ValueError(f"{str(path)!r} is not an ssm_ref checkpoint (no 'version'/'epoch' entries)")
    version = data["version"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r} entry 'version' = {version.tolist()!r}; expected "
                         f"{CHECKPOINT_VERSION} (the format this ssm_ref reads)")
    epoch = data["epoch"]
    if epoch.shape != () or epoch.dtype.kind not in "iu" or int(epoch) < 0:
        raise ValueError(f"checkpoint {str(path)!r} entry 'epoch' = {epoch.tolist()!r} "
                         f"(dtype {epoch.dtype}); expected an integer >= 0")
    for key in ("history_json", "settings_json"):
        if key in data:
            try:
                value = json.loads(str(data[key]))
            except ValueError as exc:
                raise ValueError(f"checkpoint {str(path)!r} entry {key!r} is not valid JSON: "
                                 f"{exc}") from exc
            if not isinstance(value, dict):
                raise ValueError(f"checkpoint {str(path)!r} entry {key!r} holds a "
                                 f"{type(value).__name__}; expected a JSON object")
    return data


def _read_npz(path):
    """The arrays of an ``.npz`` file, each member's size checked before it is read.

    A member's uncompressed size, declared in the zip directory, must be what
    its ``.npy`` header (shape and dtype) needs, so a small compressed file
    cannot expand into a large allocation before any check; and zipfile stops
    reading a member at its declared size.
    """
    data = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename
            key = name[:-4] if name.endswith(".npy") else name
            with zf.open(info) as fh:
                try:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                except ValueError as exc:
                    raise ValueError(f"checkpoint {str(path)!r} entry {key!r} is not a NumPy "
                                     f"array file: {exc}") from exc
                if dtype.hasobject:
                    raise ValueError(f"checkpoint {str(path)!r} entry {key!r} holds Python "
                                     "objects; expected plain arrays")
                need = fh.tell() + math.prod(shape) * dtype.itemsize
            if info.file_size != need:
                raise ValueError(f"checkpoint {str(path)!r} entry {key!r} declares "
                                 f"{info.file_size} bytes uncompressed; expected {need} for "
                                 f"shape {shape} and dtype {dtype}")
            with zf.open(info) as fh:
                data[key] = np.lib.format.read_array(fh, allow_pickle=False)
    return data


def _check_model_entries(data, model, path):
    """Weights of the model's parameters must have their shapes and be finite."""
    params = getattr(model, "params", None) or {}
    for key, value in data.items():
        if not key.startswith(_MODEL_PREFIX):
            continue
        name = key[len(_MODEL_PREFIX):]
        if name in params and tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(f"checkpoint {str(path)!r} entry {key!r} has shape {value.shape} but "
                             f"parameter {name!r} has shape {tuple(params[name].shape)}; "
                             "expected equal shapes")
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise ValueError(f"checkpoint {str(path)!r} entry {key!r} holds non-finite values; "
                             "expected finite numbers")


def _restore_model(data, model):
    xp = np
    params = getattr(model, "params", None)
    if params:
        xp = array_module(next(iter(params.values())))
    sd = {k[len(_MODEL_PREFIX):]: (v if xp is np else xp.asarray(v))
          for k, v in data.items() if k.startswith(_MODEL_PREFIX)}
    model.load_state_dict(sd)


def _restore_optimizer(data, optimizer, path):
    stored = str(data.get("optimizer_class", ""))
    if stored != type(optimizer).__name__:
        raise ValueError(f"checkpoint {str(path)!r} holds {stored or 'no'} optimizer state "
                         f"but a {type(optimizer).__name__} was given")
    try:
        optimizer.load_state_dict({k[len(_OPTIM_PREFIX):]: v for k, v in data.items()
                                   if k.startswith(_OPTIM_PREFIX)})
    except ValueError as exc:  # entries are named without the prefix there
        raise ValueError(f"checkpoint {str(path)!r}: {exc} (entries under {_OPTIM_PREFIX!r})") from exc


#: The settings of :func:`train` that shape the trajectory; a resumed run must
#: use the values of the run it continues (``epochs`` may grow).
_RESUME_SETTINGS = ("batch_size", "lr", "weight_decay", "seed", "optimizer", "clip_norm",
                    "warmup_epochs", "schedule", "min_lr", "augment", "dtype")


def _check_resume_settings(data, run_settings, path):
    stored = json.loads(str(data["settings_json"])) if "settings_json" in data else {}
    now = to_jsonable(run_settings)
    for key in _RESUME_SETTINGS:
        if key in stored and stored[key] != now.get(key):
            raise ValueError(f"resume: checkpoint {str(path)!r} was written by a run with "
                             f"{key} = {stored[key]!r} but this run has {key} = {now.get(key)!r}; "
                             f"expected the same {key} (pass {key}={stored[key]!r})")


# ---------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------

def plot_curves(metrics, path=None):
    """Plot loss and accuracy per epoch from a metrics dict; save to ``path`` if given.

    Uses matplotlib's object API with an Agg canvas, so it never changes the
    backend of an interactive session and works without a display.

    Returns
    -------
    matplotlib.figure.Figure
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting the curves needs matplotlib: pip install matplotlib "
                          "(or ssm-ref[experiments]), or pass plot=False") from exc
    epochs = list(range(1, len(metrics["train_loss"]) + 1))
    fig = Figure(figsize=(9, 3.4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, metrics["train_loss"], "o-", label="train")
    ax_loss.plot(epochs, metrics["test_loss_per_epoch"], "s--", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, metrics["train_accuracy"], "o-", label="train")
    ax_acc.plot(epochs, metrics["test_accuracy_per_epoch"], "s--", label="test")
    chance = metrics.get("dataset", {}).get("chance")
    if chance is not None:
        ax_acc.axhline(chance, color="grey", lw=1, ls=":", label="chance")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    ax_acc.legend()
    title = metrics.get("model", {}).get("class", "")
    name = metrics.get("dataset", {}).get("name", "")
    fig.suptitle(f"{title} on {name}".strip())
    fig.tight_layout()
    if path is not None:  # written atomically, as every file of a run
        path = Path(path)
        fmt = path.suffix[1:] or "png"
        _atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=110))
    return fig


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def train(model, dataset, epochs=10, batch_size=64, lr=3e-3, weight_decay=0.05, seed=0,
          out_dir=None, progress=True, *, optimizer="adamw", clip_norm=1.0, warmup_epochs=1,
          schedule="cosine", min_lr=0.0, augment="none", eval_batch_size=256, resume=None,
          plot=True, on_epoch_end=None, settings=None, dtype=None, keep_freed_memory=True):
    """Train ``model`` on ``dataset`` with AdamW, a cosine schedule and gradient clipping.

    Parameters
    ----------
    model : object
        Implements the interface in the module docstring.  Trained in place.
    dataset : str or ImageDataset or tuple
        A name of ``ssm_ref.data.DATASETS`` (built with ``seed``), an
        :class:`~ssm_ref.data.ImageDataset`, or ``(x_train, y_train, x_test, y_test)``.
    epochs : int, optional
        Total number of epochs (including those done before a ``resume``).
    batch_size : int, optional
    lr : float, optional
        Peak learning rate.
    weight_decay : float, optional
        Decoupled weight decay, not applied to ``model.no_weight_decay()``.
    seed : int, optional
        Seeds the order of the batches in every epoch (epoch e uses
        ``(seed, e)``).  The model's initialisation has its own seed.
    out_dir : str or Path, optional
        Where ``metrics.json``, ``curves.png`` and ``checkpoint.npz`` go
        (created if needed).  Nothing is written when None.
    progress : bool, optional
        Show a tqdm progress bar per epoch and a one-line summary per epoch.
    optimizer : {"adamw", "sgd"}, optional
    clip_norm : float or None, optional
        Clip the global gradient norm to this value; None turns clipping off.
    warmup_epochs : float, optional
        Linear warmup length, in epochs.
    schedule : {"cosine", "constant"}, optional
    min_lr : float, optional
        Floor of the cosine schedule.
    augment : {"none", "shift"}, optional
        Training-time augmentation (``ssm_ref.data.AUGMENTATIONS``): ``"shift"``
        moves each training image by up to one pixel, drawn from
        ``(seed, epoch, 1)`` so that it is reproducible and resumable.
    eval_batch_size : int, optional
    resume : str or Path, optional
        A checkpoint to continue from: weights, optimiser state, completed
        epochs and history are restored and training goes on to ``epochs``.
        The checkpoint is checked first (see :func:`load_checkpoint`), and the
        settings that shape the run (``batch_size``, ``lr``, ``weight_decay``,
        ``seed``, ``optimizer``, ``clip_norm``, ``warmup_epochs``, ``schedule``,
        ``min_lr``, ``augment``) must equal those it recorded: a ValueError
        names the one that differs.  ``epochs`` may grow.
    plot : bool, optional
        Write ``curves.png`` (needs matplotlib) when ``out_dir`` is given.
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, metrics)`` after each epoch (and its checkpoint);
        returning True stops training there (early stopping, interruption tests).
    settings : dict, optional
        Extra settings recorded in metrics.json (the command line records the
        model name, scan order, backend...).
    dtype : {None, "float64", "float32"}, optional
        The precision of the run.  None leaves the model as it is (the
        library's modules compute in float64, the reference precision).
        ``"float32"`` trains in float32 end to end: ``model.set_dtype``
        stores the parameters in float32 and makes every layer compute in it
        (activations and gradients float32), the batches are cast to float32
        and the optimiser keeps its state and computes its updates in float32
        (``state_dtype``).  ``"float64"`` calls ``model.set_dtype(float64)``.
        The model must have ``set_dtype`` (every :class:`ssm_ref.module.Module`
        does) unless ``dtype`` is None.
    keep_freed_memory : bool, optional
        Switch glibc's ``malloc`` to keeping freed memory in the process
        (:func:`ssm_ref._malloc.keep_freed_memory`, re-exported here), as
        ``ssm-ref train`` and the benchmarks run: a step's large temporaries
        are then not handed back to the kernel and faulted in again at every
        step (measured on a 2-core Zen 3 with glibc's defaults: 16,000 to
        32,000 page faults a step for VMamba and Vim on 32x32 images, and a
        VMamba float32 step 1.3 times slower).  The setting is process-wide
        and stays after the call; what it answered is recorded in the
        settings as ``"malloc"``.  False leaves the allocator alone; a
        training loop of your own can call ``keep_freed_memory()`` itself.

    Returns
    -------
    dict
        ``test_accuracy`` and ``test_loss`` (after the last epoch), the
        per-epoch lists ``train_loss``, ``train_accuracy``, ``test_loss_per_epoch``,
        ``test_accuracy_per_epoch``, ``lr`` (of the epoch's last step),
        ``epoch_time_s`` (training and evaluation) and ``train_time_s`` (the
        steps only); ``wall_time_s`` (sum of the epoch times, over resumes too),
        ``images_per_s`` (training throughput), ``n_params``, ``epochs``,
        ``steps``, ``settings``, ``model``, ``dataset``.  The same dict is
        written to ``out_dir/metrics.json``.

    Raises
    ------
    ValueError, TypeError
        Bad settings, a model that does not implement the interface, a
        non-finite loss (the run diverged: lower ``lr``).

    Notes
    -----
    Deterministic: the same model seed, data and arguments give bit-identical
    weights (NumPy; the fast backends are deterministic too as long as their
    reductions are).  The step count, not the epoch, drives the schedule, so a
    resumed run reproduces the uninterrupted one exactly.

    Examples
    --------
    Any object with the interface trains; here softmax regression on the digits
    (the tiny vision models of ``ssm_ref.vision.models`` are used the same way,
    and ``ssm-ref train`` calls this function):

    >>> import numpy as np
    >>> class Softmax:
    ...     def __init__(self):
    ...         self.params = {"W": np.zeros((64, 10)), "b": np.zeros(10)}
    ...     def forward(self, x, return_cache=False):
    ...         xf = x.reshape(len(x), -1)                        # (B, 64)
    ...         logits = xf @ self.params["W"] + self.params["b"]  # (B, 10)
    ...         return (logits, xf) if return_cache else logits
    ...     def backward(self, dlogits, xf):
    ...         return {"W": xf.T @ dlogits, "b": dlogits.sum(0)}
    ...     def state_dict(self):
    ...         return {k: v.copy() for k, v in self.params.items()}
    ...     def load_state_dict(self, sd):
    ...         for k, v in sd.items():
    ...             self.params[k][...] = v
    >>> m = train(Softmax(), "digits", epochs=3, lr=0.05, progress=False)
    >>> m["test_accuracy"] > 0.9, len(m["train_loss"]), m["n_params"]
    (True, 3, 650)
    """
    _check_model(model)
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_scalar(lr, "lr")
    if (isinstance(weight_decay, (bool, np.bool_)) or not isinstance(weight_decay, numbers.Real)
            or not math.isfinite(weight_decay) or weight_decay < 0):
        raise ValueError(f"Parameter weight_decay = {weight_decay!r} must be a finite number >= 0")
    seed = check_positive_int(seed, "seed", minimum=0)
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    check_choice(schedule, "schedule", ("cosine", "constant"))
    check_choice(augment, "augment", AUGMENTATIONS)
    if clip_norm is not None:
        clip_norm = check_positive_scalar(clip_norm, "clip_norm")
    if (isinstance(warmup_epochs, (bool, np.bool_)) or not isinstance(warmup_epochs, numbers.Real)
            or not math.isfinite(warmup_epochs) or warmup_epochs < 0):
        raise ValueError(f"Parameter warmup_epochs = {warmup_epochs!r} must be a finite "
                         "number >= 0")
    if schedule == "cosine" and (isinstance(min_lr, (bool, np.bool_))
                                 or not isinstance(min_lr, numbers.Real)
                                 or not 0.0 <= min_lr <= lr):
        raise ValueError(f"Parameter min_lr = {min_lr!r} must lie in [0, lr = {lr}]")
    eval_batch_size = check_positive_int(eval_batch_size, "eval_batch_size")
    check_bool(keep_freed_memory, "keep_freed_memory")
    if dtype is not None:
        check_choice(dtype, "dtype", DTYPES)
        if not callable(getattr(model, "set_dtype", None)):
            raise TypeError(f"Parameter dtype = {dtype!r} needs a model with set_dtype(dtype) "
                            f"(a ssm_ref Module); {type(model).__name__} has none (pass dtype=None)")
    ds = _as_dataset(dataset, seed)
    for name in ("y_train", "y_test"):
        if len(getattr(ds, name)) == 0:
            raise ValueError(f"Parameter dataset has an empty {name[2:]} set ({name} has 0 "
                             "labels); expected at least one example")
    _check_labels(ds, model)

    steps_per_epoch = math.ceil(len(ds.y_train) / batch_size)  # S
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    run_settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                    "weight_decay": float(weight_decay), "seed": seed, "optimizer": optimizer,
                    "clip_norm": clip_norm, "warmup_epochs": warmup_epochs, "schedule": schedule,
                    "min_lr": min_lr, "augment": augment, **(settings or {})}
    if keep_freed_memory:  # process-wide: steps stop faulting their temporaries in again
        run_settings["malloc"] = _malloc.keep_freed_memory()
    if dtype is not None:
        run_settings["dtype"] = dtype
        model.set_dtype(dtype)  # parameters stored, and every layer computing, in dtype
    opt_kwargs = _optimizer_kwargs(model, lr, weight_decay)
    if dtype is not None:
        opt_kwargs["state_dtype"] = dtype

    history = {"train_loss": [], "train_accuracy": [], "test_loss_per_epoch": [],
               "test_accuracy_per_epoch": [], "lr": [], "epoch_time_s": [], "train_time_s": []}
    start_epoch = 0
    if resume is not None:  # weights first: the optimiser must hold the restored arrays
        ckpt = _read_checkpoint(resume)
        _check_resume_settings(ckpt, run_settings, resume)
        _check_model_entries(ckpt, model, resume)
        check_opt = OPTIMIZERS[optimizer](model.params, **opt_kwargs)
        _restore_optimizer(ckpt, check_opt, resume)  # a bad optimiser state: nothing restored yet
        _restore_model(ckpt, model)
        start_epoch = int(ckpt["epoch"])
        stored = json.loads(str(ckpt["history_json"]))
        history.update({k: list(v) for k, v in stored.items() if k in history})
    opt = OPTIMIZERS[optimizer](model.params, **opt_kwargs)
    if resume is not None:
        _restore_optimizer(ckpt, opt, resume)

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:  # temporaries of a run that was killed while writing
            _remove_stale_tmp(out_dir / name)
    bar_factory = _tqdm() if progress else None
    xp = array_module(next(iter(model.params.values())))

    metrics = {}
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = iterate_batches(ds.x_train, ds.y_train, batch_size, shuffle=True,
                                  seed=(seed, epoch))
        aug_rng = np.random.default_rng((seed, epoch, 1))  # the augmentation's own stream
        bar = None
        if bar_factory is not None:
            bar = bar_factory(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                              leave=False, unit="step")
        for xb, yb in batches:
            xb = AUGMENTATIONS[augment](xb, aug_rng)
            xb, yb = _like_params(model, xb, yb)
            if dtype is not None:
                xb = xb.astype(dtype, copy=False)  # activations in the run's dtype from the start
            step_lr = (cosine_lr(opt.t, total_steps, lr, warmup_steps, min_lr)
                       if schedule == "cosine" else lr)
            logits, cache = model.forward(xb, return_cache=True)  # (b, K)
            loss, dlogits = softmax_cross_entropy(logits, yb)  # (), (b, K)
            grads = model.backward(dlogits, cache)  # dict like params
            if clip_norm is not None:
                clip_grad_norm(grads, clip_norm)
            opt.step(grads, lr=step_lr)
            loss_sum = loss_sum + loss * len(yb)
            correct = correct + (logits.argmax(axis=1) == yb).sum()
            seen += len(yb)
            if bar is not None:
                bar.update(1)
                if xp is np:  # on a GPU the running loss would cost a host round-trip
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", refresh=False)
        if bar is not None:
            bar.close()
        train_loss = float(loss_sum) / seen  # float() waits for a GPU to finish the epoch
        train_time = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise ValueError(f"the training loss became {train_loss} in epoch {epoch + 1}; "
                             f"the run diverged (try a smaller lr than {lr})")
        test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test, eval_batch_size)
        history["train_loss"].append(train_loss)
        history["train_accuracy"].append(float(correct) / seen)
        history["test_loss_per_epoch"].append(test_loss)
        history["test_accuracy_per_epoch"].append(test_acc)
        history["lr"].append(step_lr)
        history["epoch_time_s"].append(time.perf_counter() - t0)
        history["train_time_s"].append(train_time)

        metrics = _metrics(history, run_settings, model, ds, steps_per_epoch)
        if out_dir is not None:
            save_checkpoint(out_dir / "checkpoint.npz", model, opt, epoch + 1, history, run_settings)
            _write_json(out_dir / "metrics.json", metrics)
        if progress:
            _say(bar_factory, f"epoch {epoch + 1}/{epochs}  loss {train_loss:.4f}  "
                              f"train acc {history['train_accuracy'][-1]:.4f}  "
                              f"test acc {test_acc:.4f}  ({history['epoch_time_s'][-1]:.1f} s)")
        if on_epoch_end is not None and on_epoch_end(epoch + 1, metrics):
            break

    if not metrics:  # resumed from a checkpoint that had already finished
        metrics = _metrics(history, run_settings, model, ds, steps_per_epoch)
    if out_dir is not None:
        _write_json(out_dir / "metrics.json", metrics)
        if plot:
            plot_curves(metrics, out_dir / "curves.png")
    return metrics


def _optimizer_kwargs(model, lr, weight_decay):
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {"lr": lr, "weight_decay": float(weight_decay), "no_weight_decay": no_decay}


def _metrics(history, settings, model, ds, steps_per_epoch):
    n_done = len(history["train_loss"])
    wall = float(sum(history["epoch_time_s"]))
    train_wall = float(sum(history["train_time_s"]))
    info = _model_info(model)
    return {
        "test_accuracy": history["test_accuracy_per_epoch"][-1] if n_done else None,
        "test_loss": history["test_loss_per_epoch"][-1] if n_done else None,
        **{k: list(v) for k, v in history.items()},
        "wall_time_s": wall,
        "images_per_s": (n_done * len(ds.y_train) / train_wall) if train_wall > 0 else None,
        "n_params": info["n_params"],
        "epochs": n_done,
        "steps": n_done * steps_per_epoch,
        "settings": to_jsonable(settings),
        "model": info,
        "dataset": {"name": ds.name, "n_train": int(len(ds.y_train)), "n_test": int(len(ds.y_test)),
                    "image_shape": list(ds.x_train.shape[1:]), "n_classes": int(ds.n_classes),
                    "chance": float(ds.chance), "options": to_jsonable(ds.options)},
    }


def _write_json(path, obj):
    _atomic_write(Path(path), lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode()))


def _remove_stale_tmp(path):
    """Delete ``path + ".tmp"`` left behind by an interrupted write."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.is_file():
        tmp.unlink()


def _atomic_write(path, write):
    """Write ``path`` all or nothing: ``write(fh)`` into ``path + ".tmp"`` in the same
    directory, flush and ``fsync`` it, rename it over ``path``, ``fsync`` the directory.

    A stale temporary from an earlier, interrupted write is replaced; if ``write``
    fails (or is interrupted by Ctrl-C) the temporary is removed and ``path`` is
    left as it was.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory):
    """Make a rename in ``directory`` durable (POSIX; Windows cannot open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _tqdm():
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional extra
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("progress=True needs tqdm: pip install tqdm (or ssm-ref[experiments]), "
                          "or pass progress=False") from exc
    return tqdm


def _say(bar_factory, line):
    if bar_factory is not None and hasattr(bar_factory, "write"):
        bar_factory.write(line)
    else:
        print(line, flush=True)
