"""PlainMamba: four snake scans sharing one set of SSM parameters, with direction-aware B.

Glossary
--------
B         batch size (the SSM matrix B is written ``Bt``/``Bs`` where both meet).
H, W      height and width of the token grid; L = H·W tokens.
C         channels of the image entering the block (``d_model``).
D         ``d_inner = expand * d_model``; N ``d_state``; R ``dt_rank``.
K         number of scan directions (the four snakes).
c_t       the code of the step that reached token t (:data:`DIRECTION_CODES`).

Book chapter: "Vision Mamba blocks" (``eq-plainmamba``).
"""
from __future__ import annotations

import numpy as np

from .._validation import a_from_log, check_shape
from .._xp import array_module, on_module_cached
from ..kept_scan import scan_backward_kept, scan_keeping
from ..mamba import MambaConfig, config_from_sizes, fused_pair, linear_functions, mamba_init
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
from ..nn import (
    silu,
    silu_backward,
)
from .multi import resolve_directions
from .prenorm import PreNormBlock
from .vmamba import (
    _tokens,
    channels_first,
    conv_silu_backward,
    conv_silu_forward,
    cross_functions,
)

__all__ = ["PlainMambaMixer", "PlainMambaBlock", "DIRECTION_CODES", "gate_forward",
           "gate_backward", "gate_functions"]


#: Codes of the step that leads to a token (PlainMamba's order): start, right, left, up, down.
DIRECTION_CODES = {"start": 0, "right": 1, "left": 2, "up": 3, "down": 4}
_MOVES = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}


def _direction_codes(perm, W):
    """For each sequence position, the code of the move from the previous token (0 at t = 0)."""
    codes = np.zeros(perm.size, dtype=np.int64)
    for t in range(1, perm.size):
        (i0, j0), (i1, j1) = divmod(int(perm[t - 1]), W), divmod(int(perm[t]), W)
        move = (i1 - i0, j1 - j0)
        if move not in _MOVES:
            raise ValueError(
                f"direction-aware B needs a continuous scan order (each token a 4-neighbour "
                f"of the previous one), but step {t} jumps from cell ({i0}, {j0}) to ({i1}, {j1})")
        codes[t] = _MOVES[move]
    return codes


def _check_gate(y_cf, z, dout=None):
    """The gate's shapes: ``y_cf`` (B, D, T), ``z`` and ``dout`` (B, T, D); no broadcast."""
    if y_cf.ndim != 3:
        raise ValueError(f"Parameter y_cf has shape {y_cf.shape} but should be (B, D, T)")
    nb, nd, nt = y_cf.shape
    check_shape(z, "z", (nb, nt, nd))
    if dout is not None:
        check_shape(dout, "dout", (nb, nt, nd))


def gate_forward(y_cf, z):
    """PlainMamba's gate ``y * silu(z)`` on the merged scans ``y_cf`` (B, D, T): (B, T, D).

    ``y_cf`` is channels first, as the cross-merge writes the snakes' sum; ``z``
    (B, T, D) is the gate's half of the input projection, channels last, as is
    the result (the output projection's input).

    Examples
    --------
    >>> import numpy as np
    >>> gate_forward(np.ones((1, 2, 3)), np.zeros((1, 3, 2)))  # silu(0) = 0
    array([[[0., 0.],
            [0., 0.],
            [0., 0.]]])
    """
    _check_gate(y_cf, z)
    return y_cf.transpose(0, 2, 1) * silu(z, check=False)


def gate_backward(dout, y_cf, z, dz=None):
    """Gradients of :func:`gate_forward`: ``(dy_cf, dz)``.

    ``dy_cf = dout * silu(z)`` comes back channels first and C-contiguous, the
    layout the cross-scan reads; ``dz = dout * y * silu'(z)`` (B, T, D) is
    written into ``dz`` when one is given (the z half of the input projection's
    gradient), else into a new array.  Nothing is kept from the forward: the
    sigmoid is computed again.

    Examples
    --------
    >>> import numpy as np
    >>> dy_cf, dz = gate_backward(np.ones((1, 3, 2)), np.ones((1, 2, 3)), np.zeros((1, 3, 2)))
    >>> dy_cf.shape, float(dz[0, 0, 0])  # silu'(0) = 1/2
    ((1, 2, 3), 0.5)
    """
    _check_gate(y_cf, z, dout)
    xp = array_module(dout)
    dy_cf = xp.ascontiguousarray((dout * silu(z, check=False)).transpose(0, 2, 1))
    grad_z = silu_backward(dout * y_cf.transpose(0, 2, 1), z, check=False)
    if dz is None:
        return dy_cf, grad_z
    check_shape(dz, "dz", grad_z.shape)
    dz[...] = grad_z
    return dy_cf, dz


def gate_functions(scan_fn, scan_backward_fn):
    """PlainMamba's gate and its backward to run with these scan functions.

    Scan functions from ``fast.scan_functions("numba")`` carry compiled ones
    (attribute ``gate``, from ``fast.numba_norms``: one pass each way, the
    tokens transposed a tile at a time in cache); any other pair gets
    :func:`gate_forward` and :func:`gate_backward`.
    """
    return fused_pair(scan_fn, scan_backward_fn, "gate", default=(gate_forward, gate_backward))


_PLAIN_KEYS = ("A_log", "D", "direction_Bs", "in_proj.weight", "in_proj.bias", "conv2d.weight",
               "conv2d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
               "out_proj.weight", "out_proj.bias")
_PLAIN_OPTIONAL = ("in_proj.bias", "conv2d.bias", "out_proj.bias")


class PlainMambaMixer(Module):
    """PlainMamba's 2-D mixer: four snake scans sharing one set of SSM parameters.

    The data path (book equation ``eq-plainmamba``)::

        xz    = in_proj(u)                          (B, H, W, 2D) -> x, z
        x     = silu(depthwise_conv2d_kxk(x))       (B, H, W, D)     (k = 7)
        dt, B, C = split(x_proj(x))                 per token, computed once
        delta = dt_proj.weight @ dt                 (B, H, W, D)
        for each snake k (row, column, and both reversed):
            the tokens' x, delta, B, C read in snake order, B_t += direction_Bs[c_t]
            y_k = selective_scan(...; A, D, dt_proj.bias, softplus)   shared parameters
        y     = sum_k scatter(y_k)                  (B, H, W, D)
        out   = out_proj(y * silu(z))               (B, H, W, C)

    where ``c_t`` is the code of the step that reached token t (0 start,
    1 right, 2 left, 3 up, 4 down; :data:`DIRECTION_CODES`).  The learned
    ``direction_Bs`` (5, N) is PlainMamba's "direction-aware updating": since
    the parameters are shared, this is what tells the scan which way it moves.
    The four sequences run as one grouped scan over 4·D channels.

    Parameters
    ----------
    config : MambaConfig, optional
        Sizes and initialization; ``d_conv`` is the side of the depthwise
        convolution (PlainMamba's ``conv_size``, odd; 7 by default here).  Built
        from ``**config_fields`` when omitted, or updated by them.
    directions : str or sequence, default ``"plainmamba"``
        As in :class:`SS2D`; every order must be continuous (4-neighbour steps)
        and cover the grid.
    seed, dtype, scan_fn, scan_backward_fn
        As in :class:`SS2D`.
    **config_fields
        Fields of :class:`ssm_ref.MambaConfig`.

    Attributes
    ----------
    params : mapping
        PlainMamba's names: ``in_proj.weight``, ``conv2d.weight`` (D, 1, k, k),
        ``conv2d.bias``, ``x_proj.weight``, ``dt_proj.weight``, ``dt_proj.bias``,
        ``A_log``, ``D``, ``out_proj.weight``, ``direction_Bs`` (5, N).

    Notes
    -----
    What is implemented is the paper's description (section 3.2): each token's
    x, delta, B and C travel together along the snake.  The released code
    (``ChenhongyiYang/PlainMamba``, ``plain_mamba_layer.py``) differs in two
    ways, which this class does not copy: it permutes only x into snake order
    while delta, B and C stay in row-major order, and it adds ``dt_proj.bias``
    twice (once in ``dt_proj`` and again as the scan's ``delta_bias``).  So
    weights trained with that code load by name but do not give the same
    numbers.  Initialization: Mamba's (``ssm_ref.mamba_init``), the conv
    PyTorch's default (±1/k), ``direction_Bs`` normal with std 0.02 (the
    original's truncated normal truncates at ±2, never reached).

    References
    ----------
    Yang et al. 2024, "PlainMamba: Improving Non-Hierarchical Mamba in Visual
    Recognition", arXiv:2403.17695, section 3.2 (continuous 2D scanning,
    direction-aware updating).

    Examples
    --------
    >>> import numpy as np
    >>> m = PlainMambaMixer(d_model=4, d_state=2, d_conv=3)
    >>> m(np.zeros((1, 3, 4, 4))).shape, m.params["direction_Bs"].shape
    ((1, 3, 4, 4), (5, 2))
    """

    #: PlainMamba's own default for a field of :class:`ssm_ref.MambaConfig` (its 7x7 conv).
    config_defaults = {"d_conv": 7}
    x_ndim = 4

    def __init__(self, config=None, *, directions="plainmamba", direction_options=None, seed=0,
                 dtype=np.float64, scan_fn=None, scan_backward_fn=None, **config_fields):
        super().__init__()
        c = self.config = resolve_config(MambaConfig, config, config_fields, self.config_defaults)
        self._build, _, self.directions = resolve_directions(directions, direction_options)
        self._order_cache = {}  # (H, W) -> (perms, codes), see _orders
        rng = rng_from(seed)
        D, k = c.d_inner, c.d_conv
        p = dict(mamba_init(c, seed=rng))
        del p["conv1d.weight"]
        p.pop("conv1d.bias", None)
        bound = 1.0 / k  # PyTorch's Conv2d default, fan_in = k·k
        p["conv2d.weight"] = rng.uniform(-bound, bound, (D, 1, k, k))
        if c.conv_bias:
            p["conv2d.bias"] = rng.uniform(-bound, bound, (D,))
        p["direction_Bs"] = 0.02 * rng.standard_normal((len(DIRECTION_CODES), c.d_state))
        for key in _PLAIN_KEYS:
            if key in p:
                self.add_param(key, p[key].astype(dtype))
        self.set_backend(scan_fn, scan_backward_fn)

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", directions="plainmamba",
                        direction_options=None, scan_fn=None, scan_backward_fn=None):
        """Build from PlainMamba's ``PlainMamba2D`` names (see the class Notes on the numbers).

        Raises
        ------
        KeyError
            Missing or unknown names.
        ValueError
            A shape that does not match the sizes inferred from ``in_proj.weight``,
            ``A_log``, ``dt_proj.weight`` and ``conv2d.weight``.

        Examples
        --------
        >>> sd = PlainMambaMixer(d_model=4, d_state=2, d_conv=3).state_dict()
        >>> PlainMambaMixer.from_state_dict(sd).config.d_conv
        3
        """
        required = [k for k in _PLAIN_KEYS if k not in _PLAIN_OPTIONAL]
        arrs = read_state_dict(state_dict, prefix, required, _PLAIN_OPTIONAL,
                                "PlainMamba's PlainMamba2D")
        check_state_pair(arrs, "in_proj.bias", "out_proj.bias")
        check_state_ndim(arrs, "in_proj.weight", 2, "(2 * d_inner, d_model)")
        check_state_ndim(arrs, "A_log", 2, "(d_inner, d_state)")
        check_state_ndim(arrs, "dt_proj.weight", 2, "(d_inner, dt_rank)")
        check_state_ndim(arrs, "conv2d.weight", 4, "(d_inner, 1, k, k)")
        C, D = in_proj_sizes(arrs)
        N, R = arrs["A_log"].shape[1], arrs["dt_proj.weight"].shape[1]
        k = arrs["conv2d.weight"].shape[2]
        check_state_dstate(arrs, "A_log", "x_proj.weight", R, 0)
        expected = {"A_log": (D, N), "D": (D,), "direction_Bs": (len(DIRECTION_CODES), N),
                    "in_proj.weight": (2 * D, C), "in_proj.bias": (2 * D,),
                    "conv2d.weight": (D, 1, k, k), "conv2d.bias": (D,),
                    "x_proj.weight": (R + 2 * N, D), "dt_proj.weight": (D, R),
                    "dt_proj.bias": (D,), "out_proj.weight": (C, D), "out_proj.bias": (C,)}
        check_state_shapes(arrs, expected, f"d_model={C}, d_inner={D}, d_state={N}, dt_rank={R}, "
                                        f"conv {k}x{k}")
        config = config_from_sizes(C, D, d_state=N, d_conv=k, dt_rank=R,
                                   conv_bias="conv2d.bias" in arrs, bias="in_proj.bias" in arrs)
        obj = cls(config, directions=directions, direction_options=direction_options,
                  scan_fn=scan_fn, scan_backward_fn=scan_backward_fn)
        obj.params = arrs
        return obj

    def _orders(self, H, W):
        """``(perms, codes)``: the snakes on an H x W grid and the code of each step, built
        on the first call for that grid (a Python loop over the tokens) and kept, read-only."""
        if (H, W) not in self._order_cache:
            perms = [np.array(q, dtype=np.int64) for q in self._build(H, W)]
            for q in perms:
                if q.size != H * W:
                    raise ValueError(f"directions {self.directions!r} give a sequence of "
                                     f"{q.size} tokens on a {H}x{W} grid; PlainMamba needs "
                                     "full scan orders")
            codes = [_direction_codes(q, W) for q in perms]
            for a in perms + codes:
                a.flags.writeable = False
            self._order_cache[(H, W)] = perms, codes
        return self._order_cache[(H, W)]

    def _forward(self, u):
        """The mixer on a float64 image u (B, H, W, d_model), unchecked: ``(out, cache)``."""
        c = self.config
        Bsz, H, W, _ = u.shape
        D, N, R = c.d_inner, c.d_state, c.dt_rank
        perms, codes = self._orders(H, W)
        K = len(perms)
        xp = array_module(u)
        linear, _ = linear_functions(self.scan_fn, self.scan_backward_fn)
        xz = linear(u, self._w("in_proj.weight"), self._w("in_proj.bias"),
                    check=False)  # (B, H, W, 2D)
        xc, z = xz[..., :D], xz[..., D:]
        x_conv, x_act = conv_silu_forward(self, xc)  # (B, H, W, D): conv k x k, then SiLU
        x_dbl = linear(x_act, self._w("x_proj.weight"),
                       check=False)  # (B, H, W, R + 2N), once per token
        dt_low = xp.ascontiguousarray(x_dbl[..., :R])  # (B, H, W, R): a channel slice would
        # send the Numba linear (dt_proj and its backward) to NumPy, 0.3 and 2 ms a layer slower
        Bt, Ct = x_dbl[..., R:R + N], x_dbl[..., R + N:]  # (B, H, W, N) each
        delta = linear(dt_low, self._w("dt_proj.weight"),
                       check=False)  # (B, H, W, D); bias goes to the scan
        dirB = self._w("direction_Bs")  # (5, N)
        cross_scan, cross_merge = cross_functions(self.scan_fn, self.scan_backward_fn)

        def seqs(t):  # (B, H, W, F) -> (B, K·F, L): the K snakes' sequences side by side
            return cross_scan(channels_first(t), perms)

        us, ds = seqs(x_act), seqs(delta)  # (B, K·D, L) each
        codes_xp = [on_module_cached(cd, xp) for cd in codes]  # device copies made once
        dirBs = xp.stack([dirB[cd].T for cd in codes_xp])  # (K, N, L): B_t += direction_Bs[c_t]
        Bs = seqs(Bt).reshape(Bsz, K, N, -1) + dirBs  # (B, K, N, L)
        Cs = seqs(Ct).reshape(Bsz, K, N, -1)  # (B, K, N, L)
        A = a_from_log(self._w("A_log"), "A_log")  # (D, N)
        shared = {"A": xp.tile(A, (K, 1)), "D": xp.tile(self._w("D"), K),
                  "b": xp.tile(self._w("dt_proj.bias"), K)}  # one set, repeated for K groups
        y_all, kept = scan_keeping(self.scan_fn, us, ds, shared["A"], Bs, Cs, D=shared["D"],
                                   z=None, delta_bias=shared["b"], delta_softplus=True)
        y_all = xp.asarray(y_all, dtype=us.dtype)  # (B, K·D, L)
        y_cf = cross_merge(y_all, perms, H * W)  # (B, D, L): the snakes summed, channels first
        gate, _ = gate_functions(self.scan_fn, self.scan_backward_fn)
        y_gated = gate(y_cf, _tokens(z)).reshape(z.shape)  # (B, H, W, D): y * silu(z)
        out = linear(y_gated, self._w("out_proj.weight"), self._w("out_proj.bias"), check=False)
        cache = {"u": u, "xc": xc, "z": z, "x_conv": x_conv, "x_act": x_act, "dt_low": dt_low,
                 "perms": perms, "codes": codes, "us": us, "ds": ds, "Bs": Bs, "Cs": Cs,
                 "shared": shared, "y_cf": y_cf, "y_gated": y_gated, "scan": kept}
        return out, cache

    def _backward(self, dout, cache):
        """Gradients on float64 ``dout``, unchecked: ``(du, grads by PlainMamba's names)``.

        Examples
        --------
        >>> import numpy as np
        >>> m = PlainMambaMixer(d_model=4, d_state=2, d_conv=3)
        >>> out, cache = m.forward(np.ones((1, 2, 2, 4)), return_cache=True)
        >>> m.backward(np.ones_like(out), cache)[1]["direction_Bs"].shape
        (5, 2)
        """
        c = self.config
        D, N = c.d_inner, c.d_state
        Bsz, H, W, _ = cache["u"].shape
        perms, codes = cache["perms"], cache["codes"]
        K = len(perms)
        xp = array_module(dout)
        g = {}
        _, linear_backward = linear_functions(self.scan_fn, self.scan_backward_fn)
        dy_gated, g["out_proj.weight"], g["out_proj.bias"] = linear_backward(
            dout, cache["y_gated"], self._w("out_proj.weight"), self._w("out_proj.bias"),
            check=False)  # (B, H, W, D)
        z = cache["z"]
        dxz = xp.empty(z.shape[:-1] + (2 * D,),
                       xp.result_type(dy_gated, z))  # (B, H, W, 2D): dz into its half
        _, gate_backward = gate_functions(self.scan_fn, self.scan_backward_fn)
        dy_cf, _ = gate_backward(_tokens(dy_gated), cache["y_cf"], _tokens(z),
                                 dz=_tokens(dxz)[..., D:])  # dy (B, D, L) channels first
        cross_scan, cross_merge = cross_functions(self.scan_fn, self.scan_backward_fn)
        dys = cross_scan(dy_cf, perms)  # (B, K·D, L)
        s = scan_backward_kept(self.scan_backward_fn, dys, cache["scan"])
        s = {key: (None if v is None else xp.asarray(v, dtype=dys.dtype)) for key, v in s.items()}
        A = -xp.exp(self._w("A_log"))
        g["A_log"] = s["A"].reshape(K, D, N).sum(axis=0) * A  # shared: sum the K copies
        g["D"] = s["D"].reshape(K, D).sum(axis=0)
        g["dt_proj.bias"] = s["delta_bias"].reshape(K, D).sum(axis=0)
        g["direction_Bs"] = xp.zeros_like(self._w("direction_Bs"))  # (5, N)
        L = s["B"].shape[-1]

        # The gradients as tokens (B, L, F) over channels-first merges: the Numba linear's
        # backward reads such 3-D views in place (the (B, H, W, F) views went to NumPy)
        def merged(seq):  # (B, K·F, L) -> (B, L, F): the adjoint of the forward's seqs, a
            return cross_merge(seq, perms, H * W).transpose(0, 2, 1)  # view of (B, F, L)

        dx_act, ddelta = merged(s["u"]), merged(s["delta"])  # (B, L, D) each
        dBt = merged(s["B"].reshape(Bsz, K * N, L))  # (B, L, N)
        dCt = merged(s["C"].reshape(Bsz, K * N, L))
        for k in range(K):
            # B_t += direction_Bs[code_t], so: for t: g[code_t] += sum_b dB[b, :, t].  One
            # unbuffered scatter-add instead of a loop over t (L tiny kernels on a GPU)
            xp.add.at(g["direction_Bs"], on_module_cached(codes[k], xp),
                      s["B"][:, k].sum(axis=0).T)  # (L,) codes, (L, N) values
        d_dt_low, g["dt_proj.weight"], _ = linear_backward(
            ddelta, _tokens(cache["dt_low"]), self._w("dt_proj.weight"), check=False)  # (B, L, R)
        d_xdbl = xp.concatenate([d_dt_low, dBt, dCt], axis=-1)  # (B, L, R + 2N)
        dx_tok, g["x_proj.weight"], _ = linear_backward(
            d_xdbl, _tokens(cache["x_act"]), self._w("x_proj.weight"), check=False)  # (B, L, D)
        dx_act = (dx_act + dx_tok).reshape(cache["x_act"].shape)  # (B, H, W, D)
        _, g["conv2d.weight"], g["conv2d.bias"] = conv_silu_backward(self, dx_act, cache,
                                                                     out=dxz[..., :D])
        du, g["in_proj.weight"], g["in_proj.bias"] = linear_backward(
            dxz, cache["u"], self._w("in_proj.weight"), self._w("in_proj.bias"), check=False)
        return du, self._grads(g)


class PlainMambaBlock(PreNormBlock):
    """PlainMamba's layer: ``x + PlainMambaMixer(norm(x))`` on (B, H, W, C) images.

    Parameters
    ----------
    config : MambaConfig, optional
        The mixer's configuration (or give its fields as keywords).
    norm : {"layer", "rms"}, default "layer"
        ``nn.LayerNorm`` (``norm.weight``, ``norm.bias``) or RMSNorm
        (``norm.weight``), PlainMamba's ``use_rms_norm`` switch.
    eps : float, default 1e-5
    seed, dtype, scan_fn, scan_backward_fn
    mixer : PlainMambaMixer, optional
        An already built mixer (``config`` and ``**mixer_kwargs`` then unused).
    **mixer_kwargs
        Passed to :class:`PlainMambaMixer`.

    Attributes
    ----------
    mamba : PlainMambaMixer
        The mixer, under PlainMamba's attribute name (state-dict prefix ``mamba.``).

    Notes
    -----
    PlainMamba's optional depthwise conv + BatchNorm + GELU after the residual
    (``with_dwconv``) and drop-path are not included.

    References
    ----------
    Yang et al. 2024, PlainMamba, arXiv:2403.17695 (``PlainMambaLayer``).

    Examples
    --------
    >>> import numpy as np
    >>> blk = PlainMambaBlock(d_model=4, d_state=2, d_conv=3)
    >>> blk(np.zeros((1, 3, 3, 4))).shape
    (1, 3, 3, 4)
    """

    def __init__(self, config=None, *, norm="layer", eps=1e-5, seed=0, dtype=np.float64,
                 scan_fn=None, scan_backward_fn=None, mixer=None, **mixer_kwargs):
        if mixer is None:
            mixer = PlainMambaMixer(config, seed=seed, dtype=dtype, **mixer_kwargs)
        super().__init__(mixer, mixer_name="mamba", norm_name="norm", norm=norm, eps=eps,
                         x_ndim=4, dtype=dtype)
        self.mamba = mixer
        self.set_backend(scan_fn, scan_backward_fn)
