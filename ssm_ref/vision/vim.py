"""Vim: the bidirectional Mamba mixer and the Vim block (Zhu et al. 2024).

Glossary
--------
B         batch size.
L         sequence length (patch tokens, the class token included).
d_model   token width.
D         ``d_inner = expand * d_model``, the channels inside each Mamba path.
N         ``d_state``, the SSM state size per channel.
R         ``dt_rank``.
K         ``d_conv``, the causal convolution width inside each path.
_b        Vim's suffix for the backward (flipped) path's copy of a parameter.

Book chapter: "Vision Mamba blocks" (``eq-vim-bidirectional``, ``eq-vim-block``).
"""
from __future__ import annotations

import numpy as np

from .._validation import as_array, check_shape
from .._xp import array_module
from ..mamba import (
    INNER_KEYS,
    MambaConfig,
    config_from_sizes,
    fused_pair,
    inner_path_functions,
    inner_path_weights,
    linear_functions,
    mamba_init,
)
from ..module import (
    Module,
    check_state_dstate,
    check_state_ndim,
    check_state_pair,
    check_state_shapes,
    in_proj_sizes,
    read_state_dict,
    resolve_config,
    rng_from,
)
from .prenorm import PreNormBlock

__all__ = ["VimMixer", "VimBlock"]

#: Vim's names for the backward path's copy of each Mamba inner-path parameter
#: (``ssm_ref.mamba.INNER_KEYS``).
_BACKWARD_NAMES = {"A_log": "A_b_log", "D": "D_b", "conv1d.weight": "conv1d_b.weight",
                   "conv1d.bias": "conv1d_b.bias", "x_proj.weight": "x_proj_b.weight",
                   "dt_proj.weight": "dt_proj_b.weight", "dt_proj.bias": "dt_proj_b.bias"}
_VIM_KEYS = ("A_log", "A_b_log", "D", "D_b", "in_proj.weight", "in_proj.bias",
             "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
             "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
             "dt_proj_b.bias", "out_proj.weight", "out_proj.bias")
_VIM_OPTIONAL = ("in_proj.bias", "out_proj.bias", "conv1d.bias", "conv1d_b.bias")


def bidirectional_functions(scan_fn, scan_backward_fn):
    """Vim's merge of its two paths and the merge's backward, to run with these scan functions.

    Scan functions from ``fast.scan_functions("numba")`` carry compiled ones
    (attribute ``bidirectional``: the merge on the first function, its
    backward on the second, from ``fast.numba_bidirectional``); any other
    pair gets :func:`merge_directions` and :func:`merge_directions_backward`.
    """
    return fused_pair(scan_fn, scan_backward_fn, "bidirectional",
                      default=(merge_directions, merge_directions_backward))


def merge_directions(y_f, y_b, scale=1.0, out=None):
    """``scale * (y_f + flip(y_b))``, the flip along the last axis: Vim's merge of its paths.

    ``y_f`` and ``y_b`` (..., L) of one shape: the forward path's output and the
    backward path's, which ran on the flipped sequence and is flipped back here
    (``eq-vim-bidirectional``; ``scale`` 1/2 for the average).  ``out``: an
    array of that shape to write into (``y_f`` itself in the mixer's backward,
    which adds the flipped path's ``dxz`` into the forward path's with scale 1:
    the adjoint of reading ``xz`` flipped).  Returns ``out`` or a new array.

    Examples
    --------
    >>> merge_directions(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0]), 0.5)
    array([15.5, 11. ,  6.5])
    """
    check_shape(y_b, "y_b", tuple(y_f.shape))  # no broadcast
    out = array_module(y_f).add(y_f, y_b[..., ::-1], out=out)
    if scale != 1:
        out *= scale
    return out


def merge_directions_backward(dy, scale=1.0):
    """Gradients of :func:`merge_directions` with respect to ``y_f`` and ``y_b``.

    ``dy`` (..., L): the merged output's gradient.  Returns ``(dy_f, dy_b)``,
    new arrays: ``scale * dy`` and its flip along the last axis (C-contiguous:
    the backward path's gradient in the order it scanned).

    Examples
    --------
    >>> merge_directions_backward(np.array([1.0, 2.0, 4.0]), 0.5)
    (array([0.5, 1. , 2. ]), array([2. , 1. , 0.5]))
    """
    dy_f = scale * dy
    return dy_f, array_module(dy).ascontiguousarray(dy_f[..., ::-1])


class VimMixer(Module):
    """Vim's bidirectional Mamba mixer ("bimamba v2") on (B, L, d_model) tokens.

    One ``in_proj`` feeds two Mamba inner paths (:func:`ssm_ref.mamba_inner_forward`,
    the official ``mamba_inner_fn_no_out_proj``) with separate parameters: the
    forward path reads the sequence as it is, the backward path reads it
    flipped (x and the gate z both flipped); the backward output is flipped
    back, the two are averaged and ``out_proj`` maps them to ``d_model``::

        xz    = in_proj(u)                                  (B, 2D, L)
        y_f   = path(xz;        conv1d,   x_proj,   dt_proj,   A_log,   D)
        y_b   = path(flip(xz);  conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b)
        out   = out_proj(((y_f + flip(y_b)) / 2)^T)         (B, L, d_model)

    Parameters
    ----------
    config : MambaConfig, optional
        Sizes and initialization of each Mamba path; built from ``**config_fields``
        when omitted (``VimMixer(d_model=8, d_state=4)``), or updated by them.
    seed : int or numpy.random.Generator, default 0
    dtype : numpy dtype, default float64
    scan_fn, scan_backward_fn : callable, optional
        The selective scan and its backward (default: the reference).
    divide_out : bool, default True
        Average the two directions (Vim's ``if_divide_out=True``); False sums them.
    **config_fields
        Fields of :class:`ssm_ref.MambaConfig`.

    Attributes
    ----------
    config : MambaConfig
    params : mapping
        Vim's names: the Mamba ones (``in_proj.weight``, ``conv1d.weight``
        (D, 1, K), ``conv1d.bias``, ``x_proj.weight``, ``dt_proj.weight``,
        ``dt_proj.bias``, ``A_log``, ``D``, ``out_proj.weight``) plus the
        backward path's ``conv1d_b.*``, ``x_proj_b.weight``, ``dt_proj_b.*``,
        ``A_b_log``, ``D_b``.

    Notes
    -----
    Implements ``eq-vim-bidirectional``.  Vim's models set ``if_divide_out=True``,
    hence the average rather than the sum (``divide_out=False`` gives the
    sum).  Each direction is initialized
    like the official Mamba block (:func:`ssm_ref.mamba_init`); the original
    Vim code gives the backward path's ``dt_proj_b`` PyTorch's default Linear
    initialization instead of the special dt initialization (a difference at
    initialization only; loaded weights are used as they are).

    The mixer sees a plain token sequence: which spatial order the patches
    were flattened in, and where the class token sits, is decided before it
    (see :func:`ssm_ref.vision.to_sequence` and :func:`insert_cls_token`).

    References
    ----------
    Zhu et al. 2024, "Vision Mamba", arXiv:2401.09417, Algorithm 1;
    ``hustvl/Vim``, ``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py`` (bimamba v2).

    Examples
    --------
    >>> import numpy as np
    >>> mixer = VimMixer(d_model=4, d_state=2)
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 4))
    >>> mixer(x).shape
    (2, 5, 4)
    >>> sorted(k for k in mixer.state_dict() if "_b" in k)  # doctest: +NORMALIZE_WHITESPACE
    ['A_b_log', 'D_b', 'conv1d_b.bias', 'conv1d_b.weight', 'dt_proj_b.bias',
     'dt_proj_b.weight', 'x_proj_b.weight']
    """

    def __init__(self, config=None, *, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None, divide_out=True, **config_fields):
        super().__init__()
        self.config = resolve_config(MambaConfig, config, config_fields)
        if not isinstance(divide_out, (bool, np.bool_)):
            raise TypeError(f"Parameter divide_out = {divide_out!r} must be True or False")
        self.divide_out = bool(divide_out)
        rng = rng_from(seed)
        fwd = mamba_init(self.config, seed=rng, dtype=dtype)
        bwd = mamba_init(self.config, seed=rng, dtype=dtype)
        p = {**fwd, **{_BACKWARD_NAMES[k]: bwd[k] for k in INNER_KEYS if k in bwd}}
        for k in _VIM_KEYS:
            if k in p:
                self.add_param(k, p[k])
        self.set_backend(scan_fn, scan_backward_fn)

    def __repr__(self):
        c = self.config
        return (f"VimMixer(d_model={c.d_model}, d_inner={c.d_inner}, d_state={c.d_state}, "
                f"d_conv={c.d_conv}, dt_rank={c.dt_rank}, params={self.n_params()})")

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", scan_fn=None, scan_backward_fn=None):
        """Build a mixer from Vim's bimamba-v2 ``Mamba`` state dict (NumPy arrays).

        Sizes are inferred as in :meth:`ssm_ref.MambaBlock.from_state_dict`
        and every entry, the backward path's included, is checked against them.

        Raises
        ------
        KeyError
            Missing or unknown names (all listed), or only one of the two
            linear biases.
        ValueError
            A shape that does not match the inferred sizes (the key, its shape
            and the expected shape are named).

        Examples
        --------
        >>> m = VimMixer.from_state_dict(VimMixer(d_model=6, d_state=2).state_dict())
        >>> m.config.d_inner, m.config.d_state
        (12, 2)
        """
        required = [k for k in _VIM_KEYS if k not in _VIM_OPTIONAL]
        arrs = read_state_dict(state_dict, prefix, required, _VIM_OPTIONAL, "Vim's Mamba (v2)")
        check_state_pair(arrs, "in_proj.bias", "out_proj.bias")
        check_state_pair(arrs, "conv1d.bias", "conv1d_b.bias")
        check_state_ndim(arrs, "in_proj.weight", 2, "(2 * d_inner, d_model)")
        check_state_ndim(arrs, "A_log", 2, "(d_inner, d_state)")
        check_state_ndim(arrs, "conv1d.weight", 3, "(d_inner, 1, d_conv)")
        check_state_ndim(arrs, "dt_proj.weight", 2, "(d_inner, dt_rank)")
        d_model, D = in_proj_sizes(arrs)
        N, K = arrs["A_log"].shape[1], arrs["conv1d.weight"].shape[2]
        R = arrs["dt_proj.weight"].shape[1]
        check_state_dstate(arrs, "A_log", "x_proj.weight", R, 0)
        path = {"A_log": (D, N), "D": (D,), "conv1d.weight": (D, 1, K), "conv1d.bias": (D,),
                "x_proj.weight": (R + 2 * N, D), "dt_proj.weight": (D, R), "dt_proj.bias": (D,)}
        expected = {"in_proj.weight": (2 * D, d_model), "in_proj.bias": (2 * D,),
                    "out_proj.weight": (d_model, D), "out_proj.bias": (d_model,), **path,
                    **{_BACKWARD_NAMES[k]: v for k, v in path.items()}}
        check_state_shapes(arrs, expected, f"d_model={d_model}, d_inner={D}, d_state={N}, "
                                        f"d_conv={K}, dt_rank={R}")
        config = config_from_sizes(d_model, D, d_state=N, d_conv=K, dt_rank=R,
                                   conv_bias="conv1d.bias" in arrs, bias="in_proj.bias" in arrs)
        obj = cls(config, scan_fn=scan_fn, scan_backward_fn=scan_backward_fn)
        obj.params = arrs
        return obj

    def _forward(self, u):
        """Both directions on float64 tokens u (B, L, d_model), unchecked: ``(out, cache)``."""
        fwd_w = inner_path_weights(self._params, dtype=self.compute_dtype)
        bwd_w = inner_path_weights(self._params, _BACKWARD_NAMES, self.compute_dtype)
        # [book:vim-mixer-forward]
        linear, _ = linear_functions(self.scan_fn, self.scan_backward_fn)
        xz = linear(u, self._w("in_proj.weight"), self._w("in_proj.bias"),
                    check=False).transpose(0, 2, 1)  # (B, 2D, L)
        inner_forward, _ = inner_path_functions(self.scan_fn, self.scan_backward_fn)
        y_f, cache_f, _ = inner_forward(xz, fwd_w, self.scan_fn)  # (B, D, L)
        y_b, cache_b, _ = inner_forward(xz[:, :, ::-1], bwd_w, self.scan_fn)  # on the flip
        merge, _ = bidirectional_functions(self.scan_fn, self.scan_backward_fn)
        y = merge(y_f, y_b, self._scale)  # (B, D, L): scale * (y_f + flip(y_b)), 1/2 or 1
        out = linear(y.transpose(0, 2, 1), self._w("out_proj.weight"),
                     self._w("out_proj.bias"), check=False)  # (B, L, d_model)
        # [/book:vim-mixer-forward]
        return out, {"u": u, "y": y, "y_f": y_f, "y_b": y_b, "f": cache_f, "b": cache_b}

    @property
    def _scale(self):
        """1/2 (the average, ``if_divide_out``) or 1 (the sum)."""
        return 0.5 if self.divide_out else 1.0

    def _backward(self, dout, cache):
        """Gradients on float64 ``dout``, unchecked: ``(du, grads by Vim's names)``.

        ``out_proj`` -> halve -> each path's backward (the backward path's
        gradient is flipped in, its ``dx`` and ``dz`` flipped out) -> the two
        paths' ``dx`` summed into ``dxz[:, :D]``, their ``dz`` into ``dxz[:, D:]``
        -> ``in_proj``.
        """
        g = {}
        _, linear_backward = linear_functions(self.scan_fn, self.scan_backward_fn)
        dy_tok, g["out_proj.weight"], g["out_proj.bias"] = linear_backward(
            dout, cache["y"].transpose(0, 2, 1), self._w("out_proj.weight"),
            self._w("out_proj.bias"), check=False)
        merge, merge_backward = bidirectional_functions(self.scan_fn, self.scan_backward_fn)
        dy_f, dy_b = merge_backward(dy_tok.transpose(0, 2, 1), self._scale)  # (B, D, L) each,
        # dy_b flipped into the order the backward path scanned
        _, inner_backward = inner_path_functions(self.scan_fn, self.scan_backward_fn)
        (dx_f, dz_f), g_f = inner_backward(
            dy_f, cache["f"], inner_path_weights(self._params, dtype=self.compute_dtype),
            self.scan_backward_fn, split=True)  # the gradients of x and z apart, (B, D, L) each
        (dx_b, dz_b), g_b = inner_backward(
            dy_b, cache["b"], inner_path_weights(self._params, _BACKWARD_NAMES,
                                                 self.compute_dtype),
            self.scan_backward_fn, split=True)
        g.update(g_f)
        g.update({_BACKWARD_NAMES[k]: v for k, v in g_b.items()})
        nb, D, nl = dx_f.shape
        dxz = array_module(dx_f).empty((nb, 2 * D, nl), dx_f.dtype)  # (B, 2D, L)
        merge(dx_f, dx_b, out=dxz[:, :D])  # each half: the flipped path's flipped back and
        merge(dz_f, dz_b, out=dxz[:, D:])  # added to the forward path's, written in place
        du, g["in_proj.weight"], g["in_proj.bias"] = linear_backward(
            dxz.transpose(0, 2, 1), cache["u"], self._w("in_proj.weight"),
            self._w("in_proj.bias"), check=False)  # (B, L, d_model)
        return du, self._grads(g)


class VimBlock(PreNormBlock):
    """Vim's block: ``x + VimMixer(RMSNorm(x))`` on (B, L, d_model) tokens.

    Parameters
    ----------
    config : MambaConfig, optional
        The mixer's configuration (or give its fields as keywords).
    eps : float, default 1e-5
        RMSNorm epsilon (Vim's ``norm_epsilon``).
    seed : int or numpy.random.Generator, default 0
    dtype : numpy dtype, default float64
    scan_fn, scan_backward_fn : callable, optional
    mixer : VimMixer, optional
        An already built mixer (``config`` and ``**mixer_kwargs`` then unused).
    **mixer_kwargs
        Passed to :class:`VimMixer` (``d_model``, ``d_state``, ``d_conv``, ``expand``, ...).

    Attributes
    ----------
    mixer : VimMixer
    params : mapping
        ``norm.weight`` (d_model,); the mixer's under ``mixer.`` in :meth:`state_dict`.

    Notes
    -----
    Implements ``eq-vim-block``.  Vim's ``Block`` carries the residual stream
    separately: it returns ``(h, r)`` with ``r = r_prev + h_prev`` and
    ``h = mixer(norm(r))``.  Unrolled over layers the residual stream is
    ``x_0 + h_1 + ... + h_l``, which is exactly the sequence of this pre-norm
    form ``x_{l+1} = x_l + mixer(norm(x_l))`` (Vim's final ``norm_f`` then sees
    ``r + h``, the output of our last block).  Drop-path is not included.

    References
    ----------
    Zhu et al. 2024, Vim, arXiv:2401.09417; ``hustvl/Vim``, ``vim/models_mamba.py``.

    Examples
    --------
    >>> import numpy as np
    >>> blk = VimBlock(d_model=4, d_state=2)
    >>> blk(np.zeros((1, 3, 4))).shape
    (1, 3, 4)
    >>> out, cache = blk.forward(np.ones((1, 3, 4)), return_cache=True)
    >>> dx, g = blk.backward(np.ones_like(out), cache)
    >>> "norm.weight" in g and "mixer.A_b_log" in g
    True
    """

    def __init__(self, config=None, *, eps=1e-5, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None, mixer=None, **mixer_kwargs):
        if mixer is None:
            mixer = VimMixer(config, seed=seed, dtype=dtype, **mixer_kwargs)
        super().__init__(mixer, mixer_name="mixer", norm_name="norm", norm="rms", eps=eps,
                         x_ndim=3, dtype=dtype)
        self.mixer = mixer
        self.set_backend(scan_fn, scan_backward_fn)

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", eps=1e-5, scan_fn=None,
                        scan_backward_fn=None):
        """Build from Vim's ``Block`` names: ``norm.weight`` and ``mixer.*``.

        Examples
        --------
        >>> sd = VimBlock(d_model=4, d_state=2).state_dict()
        >>> VimBlock.from_state_dict(sd).mixer.config.d_state
        2
        """
        if not hasattr(state_dict, "keys") or prefix + "norm.weight" not in state_dict:
            raise KeyError(f"state_dict (prefix {prefix!r}) lacks 'norm.weight' of Vim's Block")
        mixer = VimMixer.from_state_dict(state_dict, prefix=prefix + "mixer.")
        obj = cls(eps=eps, mixer=mixer, scan_fn=scan_fn, scan_backward_fn=scan_backward_fn)
        w = as_array(state_dict[prefix + "norm.weight"], "state_dict['norm.weight']",
                     allow_complex=False)
        check_shape(w, "state_dict['norm.weight']", (mixer.config.d_model,))
        obj.params["norm.weight"] = w.copy()
        return obj
