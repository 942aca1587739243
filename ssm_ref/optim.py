"""Optimisers, the loss and the learning-rate schedule for training the tiny models.

Glossary
--------
B        batch size
K        number of classes
p        one parameter array (any shape); ``g`` its gradient
m, v     AdamW's first and second moment estimates of ``g`` (same shape as p)
t        the step counter, starting at 1 on the first update
lr       learning rate; ``wd`` weight decay; ``beta1, beta2, eps`` Adam's constants

Everything here works on dicts ``name -> array`` (the ``params`` of a model and
the ``grads`` its ``backward`` returns, with the same keys).  Updates are made
**in place** on the parameter arrays, so the model sees them without a reload.
The arrays may be NumPy or CuPy: the code only uses operators and methods that
both share (``*``, ``+``, ``.astype``, ``.sum``), so it runs unchanged on a GPU.

Precision: the moments are kept in float64 and each update is computed in
float64, then written back in the parameter's own dtype (float32 stays float32).
An optimiser made with ``state_dtype=np.float32`` (the float32 training option,
``train(..., dtype="float32")``) keeps its moments and computes its updates in
float32 instead.

Weight decay is *decoupled* (Loshchilov & Hutter 2019, "Decoupled Weight Decay
Regularization", arXiv:1711.05101), the algorithm of ``torch.optim.AdamW``: the
parameter is shrunk by ``lr·wd·p`` before the Adam step, instead of adding
``wd·p`` to the gradient.  Parameters named in ``no_weight_decay`` are not
shrunk: the official Mamba code marks ``A_log`` and ``D`` with
``_no_weight_decay`` (state-spaces/mamba, ``mamba_simple.py``), and vision-Mamba
models add position embeddings, class tokens and norm weights.  Models list
their own in ``model.no_weight_decay()``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from ._xp import array_module
from ._validation import (as_array, check_bool, check_finite, check_positive_int,
                          check_positive_scalar)

__all__ = [
    "softmax_cross_entropy",
    "AdamW",
    "SGD",
    "cosine_lr",
    "clip_grad_norm",
    "global_norm",
    "OPTIMIZERS",
]


# ---------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------

def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy over a batch and its gradient with respect to the logits.

    Parameters
    ----------
    logits : ndarray, shape (B, K)
        Unnormalised class scores (NumPy or CuPy, float32 or float64).
    labels : ndarray of int, shape (B,)
        The true class of each example, in ``0 .. K-1``.

    Returns
    -------
    loss : float
        ``-mean_b log softmax(logits_b)[labels_b]`` as a Python float
        (a 0-d array of the same module for CuPy, so no host round-trip).
    dlogits : ndarray, shape (B, K)
        ``(softmax(logits) - onehot(labels)) / B``, in the dtype of ``logits``.

    Raises
    ------
    ValueError
        ``logits`` not 2-D or not finite, ``labels`` of the wrong shape or out of range
        (values are checked on NumPy arrays only: on a GPU the check would wait for
        the device at every step; :func:`ssm_ref.train.train` checks labels once).
    TypeError
        ``labels`` not integers.

    Notes
    -----
    Numerically stable: the row maximum is subtracted before exponentiating,
    ``log softmax(z)_k = (z_k - max z) - log sum_j exp(z_j - max z)``, so no
    ``exp`` overflows.  Computed in float64 and the gradient cast back to the
    input dtype.  The gradient of the mean is the well-known
    ``(p - y) / B`` (Goodfellow, Bengio & Courville 2016, section 6.2.2.3).

    Examples
    --------
    >>> import numpy as np
    >>> loss, d = softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(loss, 6)          # log 4: uniform scores over 4 classes
    1.386294
    >>> d[0]
    array([-0.375,  0.125,  0.125,  0.125])
    """
    xp = array_module(logits)
    if xp is np:
        logits = as_array(logits, "logits", allow_complex=False, ndim=2)
    elif logits.ndim != 2:
        raise ValueError(f"Parameter logits has shape {logits.shape} but should be (B, K)")
    n, k = logits.shape
    if n == 0 or k == 0:
        raise ValueError(f"Parameter logits has shape {logits.shape}; B and K must be >= 1")
    labels = xp.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"Parameter labels has dtype {labels.dtype} but integer class indices were expected")
    if labels.shape != (n,):
        raise ValueError(f"Parameter labels has shape {labels.shape} but should be ({n},)")
    if xp is np:
        if n and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(
                f"Parameter labels has values in [{labels.min()}, {labels.max()}] "
                f"but should lie in [0, {k - 1}]")
        if not np.all(np.isfinite(logits)):
            raise ValueError("Parameter logits has non-finite values (NaN or inf)")
    z = logits.astype(xp.float64)  # (B, K)
    z = z - z.max(axis=1, keepdims=True)  # (B, K), each row's max is 0
    log_norm = xp.log(xp.exp(z).sum(axis=1, keepdims=True))  # (B, 1)
    log_p = z - log_norm  # (B, K)
    rows = xp.arange(n)
    loss = -log_p[rows, labels].mean()  # ()
    dlogits = xp.exp(log_p)  # (B, K) softmax probabilities
    dlogits[rows, labels] -= 1.0
    dlogits /= n
    loss = float(loss) if xp is np else loss
    return loss, dlogits.astype(logits.dtype)


# ---------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------

def _check_mapping(arrays, name):
    if not isinstance(arrays, Mapping):
        raise TypeError(f"Parameter {name} is a {type(arrays).__name__}; expected a dict "
                        "name -> array")


def global_norm(arrays):
    """The Euclidean norm of all arrays of a dict taken together, computed in float64.

    Returns a Python float for NumPy arrays, a 0-d array for CuPy arrays (so a
    GPU training step does not wait for the host).

    Examples
    --------
    >>> import numpy as np
    >>> global_norm({"a": np.array([3.0]), "b": np.array([[4.0]])})
    5.0
    """
    _check_mapping(arrays, "arrays")
    total = 0.0
    xp = np
    for g in arrays.values():
        xp = array_module(g)
        g64 = g.astype(xp.float64, copy=False)
        total = total + (g64 * g64).sum()
    norm = xp.sqrt(total)
    return float(norm) if xp is np else norm


def clip_grad_norm(grads, max_norm):
    """Scale all gradients **in place** so that their global norm is at most ``max_norm``.

    Parameters
    ----------
    grads : dict of str -> ndarray
        Gradients, modified in place.
    max_norm : float
        The largest global norm allowed (> 0).

    Returns
    -------
    float
        The global norm *before* clipping (useful to log); a 0-d array for CuPy.

    Raises
    ------
    ValueError
        The norm is not finite (NumPy arrays; a NaN gradient means a bug or a
        divergence, and clipping would hide it).

    Notes
    -----
    Global-norm clipping (Pascanu, Mikolov & Bengio 2013, arXiv:1211.5063), as
    ``torch.nn.utils.clip_grad_norm_``: with ``n = ||g||`` over all arrays,
    every gradient is multiplied by ``min(1, max_norm / (n + 1e-6))``, so the
    direction is kept and only the length shrinks.  The factor is applied
    always (it is exactly 1 when no clipping is needed), which avoids a branch
    on a device value.

    Examples
    --------
    >>> import numpy as np
    >>> g = {"w": np.array([3.0, 4.0])}
    >>> clip_grad_norm(g, 1.0)
    5.0
    >>> g["w"].round(6)
    array([0.6, 0.8])
    """
    max_norm = check_positive_scalar(max_norm, "max_norm")
    _check_mapping(grads, "grads")
    norm = global_norm(grads)
    if isinstance(norm, float) and not math.isfinite(norm):
        raise ValueError(f"the global gradient norm is {norm}; cannot clip non-finite gradients")
    xp = array_module(*grads.values())
    coef = xp.minimum(1.0, max_norm / (norm + 1e-6))  # () 1 when no clipping is needed
    for g in grads.values():
        g *= xp.asarray(coef, dtype=g.dtype)
    return norm


# ---------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------

def cosine_lr(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """Learning rate at ``step`` of a linear-warmup, cosine-decay schedule.

    Parameters
    ----------
    step : int
        The 0-based index of the update about to be made.
    total_steps : int
        The number of updates in the whole run (>= 1).
    base_lr : float
        The peak learning rate, reached at the end of the warmup.
    warmup_steps : int, optional
        Updates of linear warmup from ``base_lr / warmup_steps`` up to ``base_lr``.
    min_lr : float, optional
        The floor the cosine decays towards (reached at step total_steps).

    Returns
    -------
    float

    Notes
    -----
    ``lr = base_lr·(step+1)/warmup_steps`` during warmup, then, with
    ``q = (step - warmup_steps) / max(1, total_steps - warmup_steps)``,
    ``lr = min_lr + (base_lr - min_lr)·(1 + cos(π q))/2`` (SGDR without
    restarts, Loshchilov & Hutter 2017, arXiv:1608.03983; the schedule Vim and
    VMamba train with, at ImageNet scale).

    Examples
    --------
    >>> [round(cosine_lr(s, 6, 1.0, warmup_steps=2), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    step = check_positive_int(step, "step", minimum=0)
    total_steps = check_positive_int(total_steps, "total_steps")
    base_lr = check_positive_scalar(base_lr, "base_lr")
    warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
    if not isinstance(min_lr, numbers.Real) or not (0.0 <= min_lr <= base_lr):
        raise ValueError(f"Parameter min_lr = {min_lr!r} must lie in [0, base_lr = {base_lr}]")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    q = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    q = min(q, 1.0)
    return float(min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * q)))


# ---------------------------------------------------------------------------
# Optimisers
# ---------------------------------------------------------------------------

class _Optimizer:
    """What AdamW and SGD share: the params dict, the decay set, the checks, the state I/O."""

    _slots: tuple[str, ...] = ()  # names of the per-parameter state arrays

    def __init__(self, params, lr, weight_decay, no_weight_decay, state_dtype=np.float64):
        if not isinstance(params, Mapping) or not params:
            raise TypeError("Parameter params must be a non-empty mapping name -> array "
                            f"(got {type(params).__name__})")
        self.params = params
        self.lr = check_positive_scalar(lr, "lr")
        if not isinstance(weight_decay, numbers.Real) or weight_decay < 0 or not math.isfinite(weight_decay):
            raise ValueError(f"Parameter weight_decay = {weight_decay!r} must be a finite number >= 0")
        self.weight_decay = float(weight_decay)
        excluded = set(no_weight_decay or ())
        unknown = excluded - set(params)
        if unknown:
            raise ValueError(f"Parameter no_weight_decay names {sorted(unknown)} which are not "
                             f"parameters (known: {sorted(params)})")
        self.no_weight_decay = excluded
        self.t = 0  # number of updates made so far
        self.state = {slot: {} for slot in self._slots}
        dt = np.dtype(state_dtype) if state_dtype in (np.float32, np.float64, "float32",
                                                      "float64") else None
        if dt is None:
            raise ValueError(f"Parameter state_dtype = {state_dtype!r} is not one of "
                             "['float32', 'float64']")
        self.state_dtype = dt  # the moments' dtype and the dtype the updates are computed in

    def decay_for(self, name):
        """The weight decay applied to parameter ``name`` (0 when excluded)."""
        return 0.0 if name in self.no_weight_decay else self.weight_decay

    def _snapshot(self):
        """``{name: array}`` of the parameters now: one walk of a model's live view
        (:class:`ssm_ref.module.Parameters` looks each name up through the module tree)."""
        return dict(self.params.items())

    def _check_grads(self, grads, finite=True, params=None):
        """Keys, types and shapes of ``grads`` against ``params`` (a :meth:`_snapshot`, taken
        here when None); with ``finite``, also that each gradient is finite."""
        params = self._snapshot() if params is None else params
        if not isinstance(grads, Mapping):
            raise TypeError(f"Parameter grads is a {type(grads).__name__}; expected a dict "
                            "name -> array with the keys of params")
        if set(grads) != set(params):
            missing = sorted(set(params) - set(grads))
            extra = sorted(set(grads) - set(params))
            raise ValueError(f"Parameter grads must have exactly the keys of params; "
                             f"missing {missing}, unexpected {extra}")
        for name, g in grads.items():
            if not hasattr(g, "dtype") or g.dtype.kind not in "biuf":
                raise TypeError(f"gradient {name!r} is {type(g).__name__}"
                                f"{' of dtype ' + str(g.dtype) if hasattr(g, 'dtype') else ''}; "
                                "expected a real array")
            if g.shape != params[name].shape:
                raise ValueError(f"gradient {name!r} has shape {g.shape} but the parameter "
                                 f"has shape {params[name].shape}")
            if finite:
                check_finite(g, f"grads[{name!r}]")  # a NaN step would corrupt the parameter

    def state_dict(self):
        """The optimiser state as a flat dict of arrays, ready for ``np.savez``.

        Keys: ``"t"`` (step count), ``"lr"``, ``"weight_decay"``, and
        ``"<slot>.<param name>"`` for every per-parameter buffer.
        """
        out = {"t": np.array(self.t, dtype=np.int64),
               "lr": np.array(self.lr), "weight_decay": np.array(self.weight_decay)}
        for slot, bufs in self.state.items():
            for name, buf in bufs.items():
                out[f"{slot}.{name}"] = buf
        return out

    def load_state_dict(self, sd):
        """Restore what :meth:`state_dict` returned (buffers are copied).

        Everything is checked before anything is changed: ``t`` an integer >= 0,
        ``lr`` > 0 and ``weight_decay`` >= 0 finite, and every buffer
        ``"<slot>.<name>"`` finite and of exactly the shape of parameter
        ``name`` (a 0-d or ``(1, 4)`` buffer is refused, never broadcast).
        A bad entry raises ValueError naming it.
        """
        if not hasattr(sd, "keys"):
            raise TypeError(f"Parameter sd is a {type(sd).__name__}, not a mapping")
        bad = [k for k in sd.keys() if not isinstance(k, str)]
        if bad:
            raise TypeError(f"optimizer state has key {bad[0]!r} of type {type(bad[0]).__name__}; "
                            "expected str keys such as 't' or 'exp_avg.<param name>'")
        t = _state_scalar(sd, "t")
        if not math.isfinite(t) or t < 0 or t != int(t):
            raise ValueError(f"optimizer state 't' = {t!r}; expected an integer step count >= 0")
        lr = _state_scalar(sd, "lr")
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"optimizer state 'lr' = {lr!r}; expected a finite number > 0")
        wd = _state_scalar(sd, "weight_decay")
        if not math.isfinite(wd) or wd < 0:
            raise ValueError(f"optimizer state 'weight_decay' = {wd!r}; expected a finite number >= 0")
        state = {slot: {} for slot in self._slots}
        for key, value in sd.items():
            slot, _, name = key.partition(".")
            if slot in state:
                if name not in self.params:
                    raise ValueError(f"optimizer state {key!r} names no parameter")
                shape = tuple(self.params[name].shape)
                if tuple(np.shape(value)) != shape:
                    raise ValueError(f"optimizer state {key!r} has shape {tuple(np.shape(value))} "
                                     f"but parameter {name!r} has shape {shape}; expected equal shapes")
                xp = array_module(self.params[name])
                buf = xp.array(value, dtype=self.state_dtype)  # a copy
                if not bool(xp.isfinite(buf).all()):
                    raise ValueError(f"optimizer state {key!r} holds non-finite values; "
                                     "expected finite numbers")
                state[slot][name] = buf
        self.t, self.lr, self.weight_decay, self.state = int(t), lr, wd, state


def _state_scalar(sd, key):
    """``sd[key]`` as a Python float, or ValueError naming ``key``."""
    if key not in sd:
        raise ValueError(f"optimizer state has no entry {key!r}")
    value = np.asarray(sd[key])
    if value.shape != () or value.dtype.kind not in "iuf":
        raise ValueError(f"optimizer state {key!r} has shape {value.shape} and dtype {value.dtype}; "
                         "expected a real scalar")
    return float(value)


class AdamW(_Optimizer):
    """Adam with decoupled weight decay, the algorithm of ``torch.optim.AdamW``.

    Parameters
    ----------
    params : dict of str -> ndarray
        The model's parameters; updated in place by :meth:`step`.
    lr : float, optional
        Learning rate (a schedule can pass another one to each :meth:`step`).
    betas : (float, float), optional
        Decay rates of the first and second moment estimates.
    eps : float, optional
        Added to the denominator ``sqrt(v̂) + eps``.
    weight_decay : float, optional
        Decoupled weight decay ``wd``; 0.01 is PyTorch's default.
    no_weight_decay : iterable of str, optional
        Parameter names that are never decayed (``model.no_weight_decay()``).
    state_dtype : {float64, float32}, optional
        dtype of the optimiser's state and of the update arithmetic (float32
        for the float32 training option).

    Notes
    -----
    One step, for each parameter ``p`` with gradient ``g`` (t counts from 1),
    following the pseudo-code of the PyTorch documentation of AdamW and
    Algorithm 2 of Loshchilov & Hutter (2019), arXiv:1711.05101::

        p  <- p - lr·wd·p                   (skipped for no_weight_decay names)
        m  <- beta1·m + (1 - beta1)·g
        v  <- beta2·v + (1 - beta2)·g²
        m̂ = m / (1 - beta1^t),  v̂ = v / (1 - beta2^t)
        p  <- p - lr·m̂ / (sqrt(v̂) + eps)

    References
    ----------
    Kingma & Ba 2015, "Adam", arXiv:1412.6980.

    Examples
    --------
    >>> import numpy as np
    >>> params = {"w": np.array([1.0, -2.0]), "A_log": np.array([0.5])}
    >>> opt = AdamW(params, lr=0.1, weight_decay=0.5, no_weight_decay={"A_log"})
    >>> opt.step({"w": np.array([1.0, 1.0]), "A_log": np.array([1.0])})
    >>> params["w"]            # decayed by 0.1*0.5, then one Adam step of size lr
    array([ 0.85, -2.  ])
    >>> params["A_log"]        # no decay: only the Adam step
    array([0.4])
    """

    _slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 no_weight_decay=(), state_dtype=np.float64):
        super().__init__(params, lr, weight_decay, no_weight_decay, state_dtype)
        if isinstance(betas, (str, bytes)) or np.ndim(betas) != 1 or len(betas) != 2:
            raise ValueError(f"Parameter betas = {betas!r} must be a pair (beta1, beta2)")
        beta1, beta2 = betas
        for name, b in (("betas[0]", beta1), ("betas[1]", beta2)):
            if not isinstance(b, numbers.Real) or not 0.0 <= b < 1.0:
                raise ValueError(f"Parameter {name} = {b!r} must lie in [0, 1)")
        self.betas = (float(beta1), float(beta2))
        self.eps = check_positive_scalar(eps, "eps")

    def step(self, grads, lr=None):
        """Make one update of every parameter in place from ``grads`` (same keys as params).

        All parameters are updated at once, as one flat vector (the moments live
        in two flat buffers; ``state[slot][name]`` are views of them): the same
        arithmetic, element by element, as a loop over the parameters, without
        the loop's dozen NumPy calls per array, which were the cost for a model
        of a few dozen small arrays (tiny Vim's 41: 1.19 -> 0.49 ms a step;
        PyTorch's ``foreach`` idea).
        """
        params = self._snapshot()
        self._check_grads(grads, finite=False, params=params)
        lr = self.lr if lr is None else check_positive_scalar(lr, "lr")
        xp, work = array_module(*params.values()), self.state_dtype
        g = xp.concatenate([grads[name].astype(work, copy=False).ravel()
                            for name in params])  # (P,) every gradient, in params' order
        if xp is np and not np.isfinite(g).all():
            self._check_grads(grads, params=params)  # names the non-finite gradient
        flat = self._flat_state(params)
        beta1, beta2 = self.betas
        self.t += 1
        t = self.t
        bias1 = 1.0 - beta1 ** t  # bias corrections of the zero-initialised moments
        bias2 = 1.0 - beta2 ** t
        m, v = flat["exp_avg"], flat["exp_avg_sq"]  # in place: the state's views follow
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        p64 = xp.concatenate([p.astype(work, copy=False).ravel() for p in params.values()])
        p64 = p64 - (lr * flat["decay"]).astype(work, copy=False) * p64  # decoupled weight
        #     decay first; lr * wd rounded to the working dtype, as a Python float times p64
        p64 = p64 - lr * (m / bias1) / (xp.sqrt(v / bias2) + self.eps)
        for name, start, stop in flat["slices"]:
            p = params[name]
            p[...] = p64[start:stop].reshape(p.shape).astype(p.dtype)  # in place: the model
            #                                                             holds this array

    def _flat_state(self, params):
        """The moments as flat buffers with ``state[slot][name]`` views of them, made again
        (from the state's arrays, zeros where none) when the parameters' shapes (``params``, a
        :meth:`_snapshot`), the weight decay or the state's arrays are not the ones they were
        made for (first step, ``load_state_dict``)."""
        layout = (self.weight_decay,) + tuple((name, p.shape) for name, p in params.items())
        flat = getattr(self, "_flat", None)
        if flat is not None and flat["layout"] == layout and all(
                self.state[slot].get(name) is view for slot in self._slots
                for name, view in flat["views"][slot].items()):
            return flat
        xp = array_module(*params.values())
        sizes = [int(np.prod(shape)) for _, shape in layout[1:]]
        stops = np.cumsum(sizes).tolist()
        slices = [(name, stop - size, stop)
                  for (name, _), size, stop in zip(layout[1:], sizes, stops)]
        flat = {"layout": layout, "slices": slices, "views": {}}
        for slot in self._slots:
            buf = xp.zeros(stops[-1], dtype=self.state_dtype)
            views = {}
            for name, start, stop in slices:
                old = self.state[slot].get(name)
                if old is not None:
                    buf[start:stop] = old.ravel()
                views[name] = buf[start:stop].reshape(params[name].shape)
            self.state[slot].update(views)
            flat[slot], flat["views"][slot] = buf, views
        flat["decay"] = xp.concatenate([xp.full(stop - start, self.decay_for(name))
                                        for name, start, stop in slices])  # float64
        self._flat = flat
        return flat

    def state_dict(self):
        out = super().state_dict()
        out["betas"] = np.array(self.betas)
        out["eps"] = np.array(self.eps)
        return out

    def load_state_dict(self, sd):
        """Restore a state dict; ``betas`` must be two numbers in [0, 1), ``eps`` finite > 0."""
        betas, eps = self.betas, self.eps
        if "betas" in sd:
            b = np.asarray(sd["betas"])
            if b.shape != (2,) or b.dtype.kind not in "iuf" or not all(0.0 <= x < 1.0 for x in b.tolist()):
                raise ValueError(f"optimizer state 'betas' = {b.tolist()!r}; expected two numbers "
                                 "in [0, 1)")
            betas = tuple(float(x) for x in b.tolist())
        if "eps" in sd:
            eps = _state_scalar(sd, "eps")
            if not math.isfinite(eps) or eps <= 0:
                raise ValueError(f"optimizer state 'eps' = {eps!r}; expected a finite number > 0")
        super().load_state_dict(sd)
        self.betas, self.eps = betas, eps


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : dict of str -> ndarray
        Updated in place by :meth:`step`.
    lr : float, optional
    momentum : float, optional
        In [0, 1); 0 gives plain SGD.
    weight_decay : float, optional
        L2 penalty added to the gradient (coupled, as in ``torch.optim.SGD``):
        ``g <- g + wd·p``, skipped for ``no_weight_decay`` names.
    nesterov : bool, optional
        Nesterov momentum: the step uses ``g + momentum·buf``.
    no_weight_decay : iterable of str, optional
    state_dtype : {float64, float32}, optional
        dtype of the optimiser's state and of the update arithmetic (float32
        for the float32 training option).

    Notes
    -----
    ``buf <- momentum·buf + g`` (``buf = g`` at the first step), then
    ``p <- p - lr·buf`` (Sutskever et al. 2013, the PyTorch form, dampening 0).

    Examples
    --------
    >>> import numpy as np
    >>> params = {"w": np.array([1.0])}
    >>> opt = SGD(params, lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     opt.step({"w": np.array([1.0])})
    >>> params["w"]   # 1 - 0.1·1 - 0.1·(0.9 + 1)
    array([0.71])
    """

    _slots = ("momentum_buffer",)

    def __init__(self, params, lr=1e-2, momentum=0.9, weight_decay=0.0, nesterov=False,
                 no_weight_decay=(), state_dtype=np.float64):
        super().__init__(params, lr, weight_decay, no_weight_decay, state_dtype)
        if not isinstance(momentum, numbers.Real) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"Parameter momentum = {momentum!r} must lie in [0, 1)")
        self.momentum = float(momentum)
        self.nesterov = check_bool(nesterov, "nesterov")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("Parameter nesterov = True needs momentum > 0")

    def step(self, grads, lr=None):
        """Make one update of every parameter in place from ``grads``."""
        params = self._snapshot()
        self._check_grads(grads, params=params)
        lr = self.lr if lr is None else check_positive_scalar(lr, "lr")
        self.t += 1
        for name, p in params.items():
            p64 = p.astype(self.state_dtype)
            g = grads[name].astype(self.state_dtype) + self.decay_for(name) * p64
            if self.momentum > 0.0:
                buf = self.state["momentum_buffer"].get(name)
                buf = g.copy() if buf is None else self.momentum * buf + g
                self.state["momentum_buffer"][name] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            p[...] = (p64 - lr * g).astype(p.dtype)

    def state_dict(self):
        out = super().state_dict()
        out["momentum"] = np.array(self.momentum)
        return out

    def load_state_dict(self, sd):
        """Restore a state dict; ``momentum`` must be a number in [0, 1)."""
        momentum = self.momentum
        if "momentum" in sd:
            momentum = _state_scalar(sd, "momentum")
            if not 0.0 <= momentum < 1.0:
                raise ValueError(f"optimizer state 'momentum' = {momentum!r}; expected a number "
                                 "in [0, 1)")
        super().load_state_dict(sd)
        self.momentum = momentum


#: Optimisers by name, for the training loop and the command line.
OPTIMIZERS = {"adamw": AdamW, "sgd": SGD}
