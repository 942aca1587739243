"""VMamba's 2-D selective scan (SS2D), the VSS block, and SS2D's LocalMamba and ES2D variants.

Glossary
--------
B         batch size (the SSM matrix B is written ``Bs`` where both meet).
H, W      height and width of the token grid; L = H·W tokens.
C         channels of the image entering the block (``d_model``).
D         ``d_inner = expand * d_model``, the channels inside the mixer.
N         ``d_state``; R ``dt_rank``.
K         number of scan directions (4 in VMamba's cross-scan).
delta     the step size Δ, per (batch, channel, token).
perm      a scan order: ``seq[t] = tokens[perm[t]]`` (``ssm_ref.vision.scan_orders``).

Book chapter: "Vision Mamba blocks" (``eq-ss2d``, ``eq-vss-block``); survey:
Rahman et al. 2024, arXiv:2410.03105, Section 4.
"""
from __future__ import annotations

import numpy as np

from .._validation import a_from_log, as_array, check_positive_scalar, check_shape
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
    depthwise_conv2d,
    depthwise_conv2d_backward,
    layer_norm,
    layer_norm_backward,
    silu,
    silu_backward,
)
from .multi import SCHEMES, CROSS_SCAN_ORDERS, count_directions, resolve_directions, scan_scheme
from .prenorm import PreNormBlock
from .scan_orders import from_sequence, to_sequence

__all__ = ["SS2D", "VSSBlock", "LocalSS2D", "ES2D", "MultiHeadSS2D"]

_SS2D_KEYS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds",
              "in_proj.weight", "in_proj.bias", "conv2d.weight", "conv2d.bias",
              "out_norm.weight", "out_norm.bias", "out_proj.weight", "out_proj.bias")
_SS2D_OPTIONAL = ("in_proj.bias", "conv2d.bias", "out_proj.bias")


class SS2D(Module):
    """VMamba's 2-D selective scan (SS2D, forward type v0) on (B, H, W, C) images.

    The data path (book equation ``eq-ss2d``)::

        xz    = in_proj(u)                             (B, H, W, 2D) -> x, z
        x     = silu(depthwise_conv2d_3x3(x))          (B, H, W, D)
        xs_k  = x read in direction k                  (B, D, L),  k = 0..K-1
        dts, Bs, Cs = split(x_proj_weight[k] @ xs_k)   (B, R, L), (B, N, L), (B, N, L)
        delta_k = dt_projs_weight[k] @ dts             (B, D, L)
        y_k   = selective_scan over the K·D channels, one call, grouped B/C
                (group k = channels k·D .. k·D + D - 1), A = -exp(A_logs),
                D = Ds, delta_bias = dt_projs_bias, softplus, no gate
        y     = sum_k scatter(y_k, direction k)        (B, H, W, D)   (VMamba's merge)
        out   = out_proj(LayerNorm(y) * silu(z))       (B, H, W, C)

    Parameters
    ----------
    config : MambaConfig, optional
        Sizes and initialization (``d_model`` is C, the image channels;
        ``d_conv`` the side of the depthwise convolution, 3 by default here:
        VMamba's 3×3; Mamba's dt initialization per direction; ``bias`` the
        biases of ``in_proj`` and ``out_proj``).  Built from ``**config_fields``
        when omitted, or updated by them.
    directions : str or sequence, default ``CROSS_SCAN_ORDERS``
        The scan directions: VMamba's four (raster, column, both reversed) by
        default; or a scheme name of :data:`ssm_ref.vision.SCHEMES`
        (``"omnidirectional"``, ``"zigma"``, ``"localmamba"``, ``"es2d"``, ...,
        merged with the scheme's ``reduce``); or a list of scan-order names or
        ``(name, options)`` pairs (merged by summation).  K is the number of directions.
    direction_options : dict, optional
        Options of a scheme name (e.g. ``{"window": 2}``).
    eps : float, default 1e-5
        ``out_norm`` epsilon (``nn.LayerNorm``'s default).
    seed, dtype, scan_fn, scan_backward_fn
        As in :class:`VimMixer`.
    **config_fields
        Fields of :class:`ssm_ref.MambaConfig`.

    Attributes
    ----------
    params : mapping
        VMamba's names: ``in_proj.weight`` (2D, C), ``conv2d.weight`` (D, 1, k, k),
        ``conv2d.bias``, ``x_proj_weight`` (K, R+2N, D), ``dt_projs_weight``
        (K, D, R), ``dt_projs_bias`` (K, D), ``A_logs`` (K·D, N), ``Ds`` (K·D,),
        ``out_norm.weight``, ``out_norm.bias``, ``out_proj.weight`` (C, D).

    Notes
    -----
    With the default directions this is VMamba's ``forward_corev0``: the
    column direction is the W×H transpose flattened (``scan_order("column")``)
    and its output is put back with the inverse transpose, which on a
    non-square grid is not the same reshape as the forward one (scattering
    through the permutation does it right).  Directions of unequal length
    (ES2D's sub-grids on odd sizes) are scanned one call each.  The
    initialization follows VMamba: PyTorch's default for the linear and conv
    layers, Mamba's dt init per direction, ``A_logs = log(1..N)``, ``Ds = 1``,
    ``out_norm`` weight 1 and bias 0.  Dropout is left out.

    References
    ----------
    Liu et al. 2024, "VMamba: Visual State Space Model", arXiv:2401.10166,
    section 3 (SS2D, cross-scan); ``MzeroMiko/VMamba``,
    ``classification/models/vmamba.py`` (``SS2D.forward_corev0``).

    Examples
    --------
    >>> import numpy as np
    >>> ss2d = SS2D(d_model=4, d_state=2)
    >>> x = np.random.default_rng(0).standard_normal((1, 3, 5, 4))
    >>> ss2d(x).shape
    (1, 3, 5, 4)
    >>> ss2d.params["x_proj_weight"].shape, ss2d.params["A_logs"].shape
    ((4, 5, 8), (32, 2))
    """

    #: SS2D's own defaults for fields of :class:`ssm_ref.MambaConfig` (VMamba's 3x3 conv).
    config_defaults = {"d_conv": 3}
    x_ndim = 4

    def __init__(self, config=None, *, directions=CROSS_SCAN_ORDERS, direction_options=None,
                 eps=1e-5, seed=0, dtype=np.float64, scan_fn=None, scan_backward_fn=None,
                 **config_fields):
        super().__init__()
        self.config = resolve_config(MambaConfig, config, config_fields, self.config_defaults)
        self.eps = check_positive_scalar(eps, "eps")
        self._set_directions(directions, direction_options)
        for k, v in self._init_params(rng_from(seed), dtype).items():
            self.add_param(k, v)
        self.set_backend(scan_fn, scan_backward_fn)

    def _set_directions(self, directions, direction_options):
        self._build, self.reduce, self.directions = resolve_directions(directions,
                                                                       direction_options)
        self.n_directions = count_directions(self._build)

    def _init_params(self, rng, dtype):
        c, K = self.config, self.n_directions
        D, k = c.d_inner, c.d_conv
        per_dir = [mamba_init(c, seed=rng) for _ in range(K)]  # Mamba's init, once per direction
        bound = 1.0 / k  # PyTorch's Conv2d default, 1/sqrt(fan_in) with fan_in = 1·k·k
        p = {
            "x_proj_weight": np.stack([q["x_proj.weight"] for q in per_dir]),  # (K, R+2N, D)
            "dt_projs_weight": np.stack([q["dt_proj.weight"] for q in per_dir]),  # (K, D, R)
            "dt_projs_bias": np.stack([q["dt_proj.bias"] for q in per_dir]),  # (K, D)
            "A_logs": np.concatenate([q["A_log"] for q in per_dir]),  # (K·D, N)
            "Ds": np.concatenate([q["D"] for q in per_dir]),  # (K·D,)
            "in_proj.weight": per_dir[0]["in_proj.weight"],  # (2D, C)
            "conv2d.weight": rng.uniform(-bound, bound, (D, 1, k, k)),
            "out_norm.weight": np.ones(D), "out_norm.bias": np.zeros(D),
            "out_proj.weight": per_dir[0]["out_proj.weight"],  # (C, D)
        }
        if c.conv_bias:
            p["conv2d.bias"] = rng.uniform(-bound, bound, (D,))
        if c.bias:
            p["in_proj.bias"] = per_dir[0]["in_proj.bias"]
            p["out_proj.bias"] = per_dir[0]["out_proj.bias"]
        return {key: p[key].astype(dtype) for key in _SS2D_KEYS if key in p}

    def __repr__(self):
        c = self.config
        return (f"{type(self).__name__}(d_model={c.d_model}, d_inner={c.d_inner}, "
                f"d_state={c.d_state}, K={self.n_directions}, directions={self.directions!r}, "
                f"params={self.n_params()})")

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", directions=CROSS_SCAN_ORDERS,
                        direction_options=None, eps=1e-5, scan_fn=None, scan_backward_fn=None):
        """Build from VMamba's SS2D (v0) state dict (NumPy arrays); sizes are inferred.

        ``d_model`` and ``d_inner`` come from ``in_proj.weight`` (2·d_inner, d_model),
        K and ``R + 2N`` from ``x_proj_weight``, R from ``dt_projs_weight``, N from
        ``A_logs``, the conv side from ``conv2d.weight``; every entry is then
        checked against them, and K against the number of ``directions``.

        Raises
        ------
        KeyError
            Missing or unknown names (all listed).
        ValueError
            A shape that does not match (key, shape and expected shape named),
            or K different from the number of directions.

        Examples
        --------
        >>> ss2d = SS2D.from_state_dict(SS2D(d_model=4, d_state=3).state_dict())
        >>> ss2d.config.d_inner, ss2d.config.d_state, ss2d.n_directions
        (8, 3, 4)
        """
        required = [k for k in _SS2D_KEYS if k not in _SS2D_OPTIONAL]
        arrs = read_state_dict(state_dict, prefix, required, _SS2D_OPTIONAL, "VMamba's SS2D")
        check_state_pair(arrs, "in_proj.bias", "out_proj.bias")
        check_state_ndim(arrs, "in_proj.weight", 2, "(2 * d_inner, d_model)")
        check_state_ndim(arrs, "x_proj_weight", 3, "(K, dt_rank + 2 * d_state, d_inner)")
        check_state_ndim(arrs, "dt_projs_weight", 3, "(K, d_inner, dt_rank)")
        check_state_ndim(arrs, "A_logs", 2, "(K * d_inner, d_state)")
        check_state_ndim(arrs, "conv2d.weight", 4, "(d_inner, 1, k, k)")
        C, D = in_proj_sizes(arrs)
        K = arrs["x_proj_weight"].shape[0]
        R, N = arrs["dt_projs_weight"].shape[2], arrs["A_logs"].shape[1]
        k = arrs["conv2d.weight"].shape[2]
        check_state_dstate(arrs, "A_logs", "x_proj_weight", R, 1)
        expected = {
            "x_proj_weight": (K, R + 2 * N, D), "dt_projs_weight": (K, D, R),
            "dt_projs_bias": (K, D), "A_logs": (K * D, N), "Ds": (K * D,),
            "in_proj.weight": (2 * D, C), "in_proj.bias": (2 * D,),
            "conv2d.weight": (D, 1, k, k), "conv2d.bias": (D,),
            "out_norm.weight": (D,), "out_norm.bias": (D,),
            "out_proj.weight": (C, D), "out_proj.bias": (C,),
        }
        check_state_shapes(arrs, expected, f"d_model={C}, d_inner={D}, d_state={N}, "
                                        f"dt_rank={R}, K={K}, conv {k}x{k}")
        config = config_from_sizes(C, D, d_state=N, d_conv=k, dt_rank=R,
                                   conv_bias="conv2d.bias" in arrs, bias="in_proj.bias" in arrs)
        build, _, label = resolve_directions(directions, direction_options)
        if count_directions(build) != K:
            raise ValueError(f"Parameter state_dict['x_proj_weight'] holds K = {K} directions "
                             f"but directions={label!r} has {count_directions(build)}")
        obj = cls(config, directions=directions, direction_options=direction_options, eps=eps,
                  scan_fn=scan_fn, scan_backward_fn=scan_backward_fn)
        obj.params = arrs
        return obj

    # ------------------------------------------------------------------ the directional core
    def _perms(self, H, W, xp=np):
        """The K scan orders (host NumPy) and the visits of each cell (1, H, W, 1) on ``xp``."""
        perms = [np.asarray(q, dtype=np.int64) for q in self._build(H, W)]
        if len(perms) != self.n_directions:
            raise ValueError(f"directions {self.directions!r} give {len(perms)} sequences on a "
                             f"{H}x{W} grid but the parameters hold K = {self.n_directions}")
        count = np.zeros(H * W)
        for q in perms:
            count[q] += 1
        # (1, H, W, 1): visits of each cell, copied to the device once (cached)
        return perms, on_module_cached(count.reshape(1, H, W, 1), xp)

    def _core_weights(self):
        c = self.config
        K, D = self.n_directions, c.d_inner
        A_logs = self._w("A_logs")
        return {"w_x": self._w("x_proj_weight"), "w_dt": self._w("dt_projs_weight"),
                "b_dt": self._w("dt_projs_bias").reshape(K * D),  # (K·D,)
                "A": a_from_log(A_logs, "A_logs"), "D": self._w("Ds")}  # (K·D, N), (K·D,)

    def _core_forward(self, x_act, w):
        """Scan x_act (B, H, W, D) in the K directions; return y (B, H, W, D) and a cache.

        The tokens are turned channels first once, ``(B, D, H·W)``, so that each
        direction's sequence is a gather along the last axis (``take``: a
        C-contiguous ``(B, D, L_k)``, the scan's layout; NumPy's fancy indexing
        on the last axis would return a strided view the scan must copy), and
        its projections are matrix products; the outputs are scattered back by
        index (``eq-scan-gather``, ``eq-scan-scatter``).
        """
        Bsz, H, W, D = x_act.shape
        c = self.config
        R, N, K = c.dt_rank, c.d_state, self.n_directions
        xp = array_module(x_act)
        perms, count = self._perms(H, W, xp)
        idx = [on_module_cached(q, xp) for q in perms]  # the orders on x_act's device
        x_cf = channels_first(x_act)  # (B, D, HW)
        one_call = len({q.size for q in perms}) == 1
        cross_scan, cross_merge = cross_functions(self.scan_fn, self.scan_backward_fn)
        if one_call:  # VMamba: the K sequences side by side, (B, K·D, L), for one scan
            u = cross_scan(x_cf, perms)  # (B, K·D, L)
            xs = [u[:, k * D:(k + 1) * D] for k in range(K)]  # K × (B, D, L): views
        else:  # sequences of different lengths
            xs = [xp.take(x_cf, idx[k], axis=2) for k in range(K)]  # K × (B, D, L_k)
        projections, _ = projection_functions(self.scan_fn, self.scan_backward_fn)
        if one_call:  # the K directions' steps side by side, (B, K·D, L), as u
            delta = xp.empty(u.shape, u.dtype)
        dts, deltas, Bs, Cs = [], [], [], []
        for k in range(K):  # x_dbl = x_proj_weight[k] @ xs_k, delta_k = dt_projs_weight[k] @ dts_k
            x_dbl, delta_k = projections(xs[k], w["w_x"][k], w["w_dt"][k], R, out=(
                delta[:, k * D:(k + 1) * D] if one_call else None))  # (B, R + 2N, L_k), (B, D, L_k)
            dts.append(x_dbl[:, :R])  # (B, R, L_k)
            Bs.append(x_dbl[:, R:R + N])  # (B, N, L_k)
            Cs.append(x_dbl[:, R + N:])  # (B, N, L_k)
            deltas.append(delta_k)
        if one_call:  # one scan over K·D channels with K groups of B and C
            y, kept = scan_keeping(self.scan_fn, u, delta, w["A"], xp.stack(Bs, axis=1),
                                   xp.stack(Cs, axis=1), D=w["D"], z=None, delta_bias=w["b_dt"],
                                   delta_softplus=True)  # (B, K·D, L); kept for the backward
            y_cf = cross_merge(xp.asarray(y, dtype=x_act.dtype), perms, H * W)  # (B, D, HW)
        else:  # sequences of different lengths: one scan per direction, its slice of parameters
            ys, kept = [], []
            for k in range(K):
                sl = slice(k * D, (k + 1) * D)
                y_k, kept_k = scan_keeping(self.scan_fn, xs[k], deltas[k], w["A"][sl], Bs[k],
                                           Cs[k], D=w["D"][sl], z=None,
                                           delta_bias=w["b_dt"][sl], delta_softplus=True)
                ys.append(xp.asarray(y_k, dtype=x_act.dtype))
                kept.append(kept_k)
            y_cf = xp.zeros((Bsz, D, H * W), x_act.dtype)  # (B, D, HW)
            for k in range(K):
                _add_back(y_cf, ys[k], perms[k], xp)  # y_cf[:, :, perm_k] += y_k: scatter back
        y_grid = grid(y_cf, H, W)  # (B, H, W, D)
        if self.reduce == "mean":
            y_grid = y_grid / count.astype(y_grid.dtype, copy=False)
        cache = {"perms": perms, "count": count, "xs": xs, "dts": dts, "deltas": deltas,
                 "Bs": Bs, "Cs": Cs, "one_call": one_call, "scan": kept}
        return y_grid, cache

    def _core_backward(self, dy_grid, cache, w):
        """Reverse of :meth:`_core_forward`: returns dx_act (B, H, W, D) and the core's grads."""
        Bsz, H, W, D = dy_grid.shape
        K = self.n_directions
        xp = array_module(dy_grid)
        perms, xs = cache["perms"], cache["xs"]
        idx = [on_module_cached(q, xp) for q in perms]
        if self.reduce == "mean":
            dy_grid = dy_grid / cache["count"].astype(dy_grid.dtype, copy=False)
        dy_cf = channels_first(dy_grid)  # (B, D, HW)
        cross_scan, cross_merge = cross_functions(self.scan_fn, self.scan_backward_fn)
        if cache["one_call"]:
            s = scan_backward_kept(self.scan_backward_fn, cross_scan(dy_cf, perms),
                                   cache["scan"])  # dy's K sequences (B, K·D, L) in, as y out
            s = {key: (None if v is None else xp.asarray(v, dtype=dy_grid.dtype))
                 for key, v in s.items()}
            dA, dDs, dbias = s["A"], s["D"], s["delta_bias"]
            du = [s["u"][:, k * D:(k + 1) * D] for k in range(K)]  # K × (B, D, L)
            ddelta = [s["delta"][:, k * D:(k + 1) * D] for k in range(K)]
            dB = [s["B"][:, k] for k in range(K)]  # K × (B, N, L)
            dC = [s["C"][:, k] for k in range(K)]
        else:
            dA, dDs, dbias = xp.zeros_like(w["A"]), xp.zeros_like(w["D"]), xp.zeros_like(w["D"])
            du, ddelta, dB, dC = [], [], [], []
            for k in range(K):
                sl = slice(k * D, (k + 1) * D)
                dy_k = xp.take(dy_cf, idx[k], axis=2)  # (B, D, L_k), C-contiguous
                s = scan_backward_kept(self.scan_backward_fn, dy_k, cache["scan"][k])
                s = {key: (None if v is None else xp.asarray(v, dtype=dy_grid.dtype))
                     for key, v in s.items()}
                dA[sl], dDs[sl], dbias[sl] = s["A"], s["D"], s["delta_bias"]
                du.append(s["u"])
                ddelta.append(s["delta"])
                dB.append(s["B"])
                dC.append(s["C"])
        g = {"A_logs": dA * w["A"],  # A = -exp(A_logs)
             "Ds": dDs, "dt_projs_bias": dbias.reshape(K, D),
             "x_proj_weight": xp.zeros_like(w["w_x"]), "dt_projs_weight": xp.zeros_like(w["w_dt"])}
        if not cache["one_call"]:
            dx_cf = xp.zeros((Bsz, D, H * W), dy_grid.dtype)  # (B, D, HW)
        _, projections_backward = projection_functions(self.scan_fn, self.scan_backward_fn)
        for k in range(K):  # du[k] += the gradient through the projections, in place
            g["x_proj_weight"][k], g["dt_projs_weight"][k] = projections_backward(
                ddelta[k], dB[k], dC[k], xs[k], cache["dts"][k], w["w_x"][k], w["w_dt"][k],
                du[k])
            if not cache["one_call"]:
                _add_back(dx_cf, du[k], perms[k], xp)  # adjoint of the gather
        if cache["one_call"]:
            dx_cf = cross_merge(s["u"], perms, H * W)  # (B, D, HW): adjoint of the cross-scan
        dx_act = grid(dx_cf, H, W)  # (B, H, W, D)
        return dx_act, g

    # ------------------------------------------------------------------ forward / backward
    def _forward(self, u):
        """SS2D on a float64 image u (B, H, W, d_model), unchecked: ``(out, cache)``."""
        D = self.config.d_inner
        # [book:ss2d-forward]
        linear, _ = linear_functions(self.scan_fn, self.scan_backward_fn)
        xz = linear(u, self._w("in_proj.weight"), self._w("in_proj.bias"),
                    check=False)  # (B, H, W, 2D)
        xc, z = xz[..., :D], xz[..., D:]  # (B, H, W, D) each
        x_conv, x_act = conv_silu_forward(self, xc)  # (B, H, W, D): conv 3x3, then SiLU
        y, core = self._core_forward(x_act, self._core_weights())  # (B, H, W, D)
        norm_gate, _ = norm_gate_functions(self.scan_fn, self.scan_backward_fn)
        if norm_gate is None:
            y_norm = layer_norm(y, self._w("out_norm.weight"), self._w("out_norm.bias"),
                                self.eps, check=False)
            gate = silu(z, check=False)  # (B, H, W, D)
            y_gated = y_norm * gate
        else:  # the Numba backend: out_norm and the gate in one pass, nothing kept for backward
            y_norm, gate = None, None
            y_gated = norm_gate(channels_first(y), _tokens(z), self._w("out_norm.weight"),
                                self._w("out_norm.bias"), self.eps).reshape(y.shape)
        out = linear(y_gated, self._w("out_proj.weight"), self._w("out_proj.bias"),
                     check=False)  # (B, H, W, C)
        # [/book:ss2d-forward]
        cache = {"u": u, "xc": xc, "z": z, "x_conv": x_conv, "x_act": x_act, "y": y,
                 "y_norm": y_norm, "gate": gate, "y_gated": y_gated, "core": core}
        return out, cache

    def _backward(self, dout, cache):
        """Gradients on float64 ``dout``, unchecked: ``(du, grads by VMamba's names)``.

        ``out_proj`` -> gate (``d y_norm = d y_gated * silu(z)``, ``dz = d y_gated *
        y_norm * silu'(z)``) -> LayerNorm -> the directional core (gather the
        gradient in each direction, the grouped scan's backward, the two
        projections of each direction, scatter back) -> SiLU -> depthwise conv -> ``in_proj``.
        """
        g = {}
        _, linear_backward = linear_functions(self.scan_fn, self.scan_backward_fn)
        dy_gated, g["out_proj.weight"], g["out_proj.bias"] = linear_backward(
            dout, cache["y_gated"], self._w("out_proj.weight"), self._w("out_proj.bias"),
            check=False)  # (B, H, W, D)
        _, norm_gate_backward = norm_gate_functions(self.scan_fn, self.scan_backward_fn)
        y, z = cache["y"], cache["z"]
        dxz = None
        if cache["gate"] is not None:
            dy_norm = dy_gated * cache["gate"]
            dz = silu_backward(dy_gated * cache["y_norm"], z, check=False)  # (B, H, W, D)
            dy, g["out_norm.weight"], g["out_norm.bias"] = layer_norm_backward(
                dy_norm, y, self._w("out_norm.weight"), self._w("out_norm.bias"), self.eps,
                check=False)
        elif norm_gate_backward is not None:  # the forward ran the fused out_norm and gate
            D = z.shape[-1]
            dxz = np.empty(z.shape[:-1] + (2 * D,),
                           np.result_type(y, z))  # (B, H, W, 2D): dz into its half
            dy_cf, dz, g["out_norm.weight"], g["out_norm.bias"] = norm_gate_backward(
                _tokens(dy_gated), channels_first(y), _tokens(z), self._w("out_norm.weight"),
                self._w("out_norm.bias"), self.eps, dz=_tokens(dxz)[..., D:])
            dy = grid(dy_cf, *y.shape[1:3])  # (B, H, W, D), channels first
        else:
            raise TypeError(_FUSED_CACHE)
        dx_act, gc = self._core_backward(dy, cache["core"], self._core_weights())
        g.update(gc)
        dxc, g["conv2d.weight"], g["conv2d.bias"] = conv_silu_backward(
            self, dx_act, cache, out=None if dxz is None else dxz[..., :z.shape[-1]])
        if dxz is None:
            dxz = array_module(dxc).concatenate([dxc, dz], axis=-1)  # (B, H, W, 2D)
        du, g["in_proj.weight"], g["in_proj.bias"] = linear_backward(
            dxz, cache["u"], self._w("in_proj.weight"), self._w("in_proj.bias"), check=False)
        return du, self._grads(g)


#: SS2D's backward on a cache whose forward ran a fused piece its scan functions lack
_FUSED_CACHE = ("Parameter cache comes from a forward on the fused Numba path; run backward "
                "with the same scan functions")


def conv_silu_forward(module, xc):
    """``(x_conv, silu(x_conv))`` of the ``module``'s depthwise conv2d (``conv2d.weight``
    (D, 1, k, k), ``conv2d.bias``) on ``xc`` (B, H, W, D), as SS2D and PlainMamba run it.

    With the fused kernel of the module's scan functions
    (:func:`conv2d_silu_functions`) it is one pass and ``x_conv`` is None: the
    backward recomputes it.
    """
    weight, bias = module._w("conv2d.weight")[:, 0], module._w("conv2d.bias")  # (D, k, k)
    fused, _ = conv2d_silu_functions(module.scan_fn, module.scan_backward_fn)
    if fused is not None:
        return None, fused(xc, weight, bias)
    x_conv = depthwise_conv2d(xc, weight, bias, check=False)  # (B, H, W, D)
    return x_conv, silu(x_conv, check=False)


def conv_silu_backward(module, dx_act, cache, out=None):
    """Gradients of :func:`conv_silu_forward` from the forward's ``cache`` (``xc``,
    ``x_conv``): ``(dxc, dweight (D, 1, k, k), dbias or None)``.

    ``out``, a (B, H, W, D) array, receives ``dxc`` (and is returned as it): the
    mixers give the x half of the input projection's gradient, which the fused
    kernel writes in place.  Raises ``TypeError`` when the forward ran the fused
    kernel and the module's scan functions now have none.
    """
    weight, bias = module._w("conv2d.weight")[:, 0], module._w("conv2d.bias")  # (D, k, k)
    in_place = False
    if cache["x_conv"] is not None:
        dx_conv = silu_backward(dx_act, cache["x_conv"], check=False)  # (B, H, W, D)
        dxc, dw, db = depthwise_conv2d_backward(dx_conv, cache["xc"], weight, bias, check=False)
    else:
        _, fused = conv2d_silu_functions(module.scan_fn, module.scan_backward_fn)
        if fused is None:
            raise TypeError(_FUSED_CACHE)
        in_place = out is not None and out.dtype == cache["xc"].dtype  # the kernel's dtype
        dxc, dw, db = fused(dx_act, cache["xc"], weight, bias, dx=out if in_place else None)
    if out is not None and not in_place:
        out[...] = dxc
        dxc = out
    return dxc, dw[:, None], db  # dweight as (D, 1, k, k)


def conv2d_silu_functions(scan_fn, scan_backward_fn):
    """SS2D's fused ``silu(depthwise_conv2d(x))`` and its backward, or ``(None, None)``.

    Scan functions from ``fast.scan_functions("numba")`` carry them (a
    ``conv2d_silu`` attribute on each, from ``fast.numba_fused``): one kernel
    for the convolution and its SiLU, the pre-activation recomputed in the
    backward.  Used only when both functions have one.
    """
    return fused_pair(scan_fn, scan_backward_fn, "conv2d_silu")


def direction_projections(x, w_x, w_dt, dt_rank, out=None):
    """One direction's projections in SS2D's core: ``(x_dbl, delta)``.

    ``x_dbl = w_x @ x`` (B, R + 2N, L), whose rows are the direction's
    low-rank steps ``dts``, its B and its C, and ``delta = w_dt @ dts`` (B, D,
    L) with ``dts = x_dbl[:, :R]`` (the official ``x_proj_weight`` and
    ``dt_projs_weight`` of one direction k: ``w_x`` (R + 2N, D), ``w_dt`` (D,
    R)); one matrix product per batch element each.  ``out``: a (B, D, L)
    array (a view) that receives delta, which is then returned.

    Scan functions may carry a compiled twin (:func:`projection_functions`).
    """
    xp = array_module(x)
    x_dbl = xp.matmul(w_x, x)  # (B, R + 2N, L)
    return x_dbl, xp.matmul(w_dt, x_dbl[:, :dt_rank], out=out)  # (B, D, L)


def direction_projections_backward(ddelta, dB, dC, x, dts, w_x, w_dt, dx):
    """Gradients of :func:`direction_projections`: ``(dw_x, dw_dt)``, and ``dx`` in place.

    ``ddelta`` (B, D, L), ``dB`` and ``dC`` (B, N, L) are the gradients of
    delta and of x_dbl's B and C rows; ``dts`` is x_dbl's first R rows.  The
    gradient reaching ``x`` through ``x_dbl`` is added into ``dx`` (B, D, L),
    which holds what reached it another way (the scan's ``du``).  The weight
    gradients sum over the batch and the sequence.
    """
    xp = array_module(x)
    dw_dt = xp.matmul(ddelta, dts.transpose(0, 2, 1)).sum(axis=0)  # (D, R)
    d_dts = xp.matmul(w_dt.T, ddelta)  # (B, R, L)
    d_xdbl = xp.concatenate([d_dts, dB, dC], axis=1)  # (B, R + 2N, L)
    dw_x = xp.matmul(d_xdbl, x.transpose(0, 2, 1)).sum(axis=0)  # (R + 2N, D)
    dx += xp.matmul(w_x.T, d_xdbl)  # (B, D, L)
    return dw_x, dw_dt


def projection_functions(scan_fn, scan_backward_fn):
    """SS2D's per-direction projections and their backward to run with these scan functions.

    Scan functions from ``fast.scan_functions("numba")`` carry compiled ones
    (attribute ``projections``, from ``fast.numba_projections``: each batch
    element's products one after the other while its slice is in cache, on all
    cores); any other pair gets :func:`direction_projections` and
    :func:`direction_projections_backward`.
    """
    return fused_pair(scan_fn, scan_backward_fn, "projections",
                      default=(direction_projections, direction_projections_backward))


def norm_gate_functions(scan_fn, scan_backward_fn):
    """SS2D's ``out_norm`` and gate ``layer_norm(y) * silu(z)`` fused, or ``(None, None)``.

    Scan functions from ``fast.scan_functions("numba")`` carry them (a
    ``norm_gate`` attribute on each, from ``fast.numba_norms``): one pass over
    the channels-first scan output each way, nothing kept for the backward
    (the normalised rows and the sigmoid are recomputed), the gradient of
    ``z`` written into its half of the input projection's gradient.  Used only
    when both functions have one.
    """
    return fused_pair(scan_fn, scan_backward_fn, "norm_gate")


def _tokens(x):
    """(B, H, W, C) as (B, H·W, C): a view for channels-last tokens and channel slices."""
    return x.reshape(x.shape[0], -1, x.shape[-1])  # (B, HW, C)


def channels_first(t):
    """Tokens (B, H, W, F) as C-contiguous (B, F, H·W), the cross-scan's layout: a copy, or
    the array itself where ``t`` is already a view of one (:func:`grid`'s result, as SS2D's
    output ``y``, which the core scatters back channels first)."""
    return array_module(t).ascontiguousarray(_tokens(t).transpose(0, 2, 1))  # (B, F, HW)


def grid(t_cf, H, W):
    """Channels-first (B, F, H·W) as tokens (B, H, W, F): a view."""
    return t_cf.transpose(0, 2, 1).reshape(t_cf.shape[0], H, W, t_cf.shape[1])  # (B, H, W, F)


def cross_functions(scan_fn, scan_backward_fn):
    """VMamba's cross-scan and cross-merge to run with these scan functions.

    Scan functions from ``fast.scan_functions("numba")`` carry compiled ones
    (attribute ``cross_scan``: the scan on the first function, the merge on
    the second, from ``fast.numba_cross``); any other pair gets
    :func:`cross_scan` and :func:`cross_merge` below.
    """
    return fused_pair(scan_fn, scan_backward_fn, "cross_scan",
                      default=(cross_scan, cross_merge))


def cross_scan(x_cf, perms):
    """The K directional sequences of ``x_cf`` (B, D, H·W) side by side: (B, K·D, L).

    ``out[:, k·D + d, l] = x_cf[:, d, perms[k][l]]``: direction k's sequence
    in channels ``k·D .. k·D + D`` (``eq-scan-gather``), the layout of VMamba's
    one grouped scan (the official ``CrossScan``, whose (B, K, D, L) output
    is this one's reshape).  Every order has the same length L.
    """
    xp = array_module(x_cf)
    return xp.concatenate([xp.take(x_cf, on_module_cached(np.asarray(q), xp), axis=2)
                           for q in perms], axis=1)  # (B, K·D, L)


def cross_merge(ys, perms, n_cells):
    """The adjoint of :func:`cross_scan`: (B, K·D, L) -> (B, D, n_cells), the K directions'
    outputs scattered back to their cells and summed (``eq-scan-scatter``; the official
    ``CrossMerge``); a cell no order visits gets 0."""
    xp = array_module(ys)
    K = len(perms)
    D = ys.shape[1] // K
    out = xp.zeros((ys.shape[0], D, n_cells), ys.dtype)  # (B, D, HW)
    for k, q in enumerate(perms):
        _add_back(out, ys[:, k * D:(k + 1) * D], np.asarray(q), xp)
    return out


def _add_back(out, seq, perm, xp):
    """``out[:, :, perm] += seq`` for out (B, D, H·W) and seq (B, D, L_k): the scatter of a scan.

    When ``perm`` visits every cell, as a gather with the inverse order
    (``out[:, :, c] += seq[:, :, inv[c]]``: the same sums, about 20x faster
    than NumPy's indexed add along the last axis at VMamba's sizes); for a
    part of the grid (EfficientVMamba's sub-grids), by the indexed add.
    """
    if perm.size == out.shape[2]:
        inv = np.empty_like(perm)
        inv[perm] = np.arange(perm.size)  # inv[c]: the step at which perm visits cell c
        out += xp.take(seq, on_module_cached(inv, xp), axis=2)
    else:
        out[:, :, on_module_cached(perm, xp)] += seq


def _with_scheme(kwargs, scheme, options):
    """SS2D's keyword arguments with ``directions`` defaulting to ``scheme``, built with ``options``.

    The options apply only when the scheme is the one used (a caller's own
    ``directions`` or ``direction_options`` are left as given).
    """
    kwargs.setdefault("directions", scheme)
    if kwargs["directions"] == scheme:
        kwargs.setdefault("direction_options", options)
    return kwargs


class LocalSS2D(SS2D):
    """SS2D over LocalMamba's windowed scans (the ``"localmamba"`` scheme).

    The four directions are local windows of side ``window`` read row-first and
    column-first, and both reversed (``ssm_ref.vision.SCHEMES["localmamba"]``);
    everything else is :class:`SS2D`.  Pass ``directions=[...]`` instead to mix
    local and global scans, as LocalMamba's searched layers do, e.g.
    ``["raster", "column_reversed", ("local", {"window": 2}), ("local_column",
    {"window": 2, "reverse": True})]``.

    Parameters
    ----------
    config : MambaConfig, optional
    window : int, default 2
        Window side (LocalMamba searches 2 and 7).
    **kwargs
        As :class:`SS2D` (not ``directions`` unless you mean to replace them).

    Notes
    -----
    LocalMamba's block (``MultiScanVSSM``) also re-weights the directions with
    a small channel/spatial attention before summing them; that module is not
    part of this class (the directions are summed, as in VMamba).

    References
    ----------
    Huang et al. 2024, "LocalMamba: Visual State Space Model with Windowed
    Selective Scan", arXiv:2403.09338.

    Examples
    --------
    >>> import numpy as np
    >>> blk = LocalSS2D(d_model=4, d_state=2, window=2)
    >>> blk(np.zeros((1, 4, 4, 4))).shape, blk.n_directions
    ((1, 4, 4, 4), 4)
    """

    def __init__(self, config=None, *, window=2, **kwargs):
        super().__init__(config, **_with_scheme(kwargs, "localmamba", {"window": window}))


class ES2D(SS2D):
    """EfficientVMamba's efficient 2-D scan: SS2D over the step² dilated sub-grids.

    The image is split into ``step**2`` atrous sub-grids (offsets (a, b), every
    ``step``-th row and column; ``ssm_ref.vision.atrous_subgrids``), each
    sub-grid is one direction with its own x_proj, dt_proj, A and D, and the
    outputs are put back in place: the sub-grids partition the image, so the
    merge has no overlap.  Each scan is ``step**2`` times shorter than a full
    cross-scan direction, which is where the saving comes from.

    Parameters
    ----------
    config : MambaConfig, optional
    step : int, default 2
    **kwargs
        As :class:`SS2D`.

    Notes
    -----
    On grids whose sides are not multiples of ``step`` the sub-grids differ in
    length and are scanned one call each (EfficientVMamba pads the map
    instead); on grids smaller than ``step`` some sub-grids are empty and the
    number of directions no longer matches the parameters, which raises.

    References
    ----------
    Pei et al. 2024, "EfficientVMamba: Atrous Selective Scan for Light Weight
    Visual Mamba", arXiv:2403.09977.

    Examples
    --------
    >>> import numpy as np
    >>> es2d = ES2D(d_model=4, d_state=2)
    >>> es2d(np.zeros((1, 4, 6, 4))).shape, es2d.n_directions
    ((1, 4, 6, 4), 4)
    """

    def __init__(self, config=None, *, step=2, **kwargs):
        super().__init__(config, **_with_scheme(kwargs, "es2d", {"step": step}))


class VSSBlock(PreNormBlock):
    """VMamba's VSS block (v0): ``x + SS2D(LayerNorm(x))`` on (B, H, W, C) images.

    Parameters
    ----------
    config : MambaConfig, optional
        The mixer's configuration (or give its fields as keywords).
    eps : float, default 1e-6
        ``ln_1`` epsilon (VMamba's ``partial(nn.LayerNorm, eps=1e-6)``).
    seed, dtype, scan_fn, scan_backward_fn
    mixer_cls : type, default SS2D
        The 2-D mixer (:class:`SS2D`, :class:`LocalSS2D`, :class:`ES2D`).
    mixer : SS2D, optional
        An already built mixer (``config``, ``mixer_cls`` and ``**mixer_kwargs`` then unused).
    **mixer_kwargs
        Passed to the mixer (``d_state``, ``directions``, ...).

    Attributes
    ----------
    self_attention : SS2D
        The mixer, under VMamba's attribute name.
    params : dict
        ``ln_1.weight``, ``ln_1.bias``; the mixer's under ``self_attention.``
        in :meth:`state_dict`.

    Notes
    -----
    Implements ``eq-vss-block``; drop-path is left out.

    References
    ----------
    Liu et al. 2024, VMamba, arXiv:2401.10166 (``VSSBlock``).

    Examples
    --------
    >>> import numpy as np
    >>> blk = VSSBlock(d_model=4, d_state=2)
    >>> blk(np.zeros((2, 3, 4, 4))).shape
    (2, 3, 4, 4)
    >>> out, cache = blk.forward(np.ones((1, 2, 2, 4)), return_cache=True)
    >>> sorted(blk.backward(np.ones_like(out), cache)[1])[:3]
    ['ln_1.bias', 'ln_1.weight', 'self_attention.A_logs']
    """

    def __init__(self, config=None, *, eps=1e-6, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None, mixer_cls=SS2D, mixer=None, **mixer_kwargs):
        if mixer is None:
            mixer = mixer_cls(config, seed=seed, dtype=dtype, **mixer_kwargs)
        super().__init__(mixer, mixer_name="self_attention", norm_name="ln_1", norm="layer",
                         eps=eps, x_ndim=4, dtype=dtype)
        self.self_attention = mixer
        self.set_backend(scan_fn, scan_backward_fn)

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", eps=1e-6, scan_fn=None,
                        scan_backward_fn=None, **mixer_kwargs):
        """Build from VMamba's ``VSSBlock`` names: ``ln_1.*`` and ``self_attention.*``.

        Examples
        --------
        >>> sd = VSSBlock(d_model=4, d_state=2).state_dict()
        >>> VSSBlock.from_state_dict(sd).self_attention.config.d_state
        2
        """
        own = [prefix + "ln_1.weight", prefix + "ln_1.bias"]
        if not hasattr(state_dict, "keys") or any(k not in state_dict for k in own):
            raise KeyError(f"state_dict (prefix {prefix!r}) lacks 'ln_1.weight' / 'ln_1.bias'")
        mixer = SS2D.from_state_dict(state_dict, prefix=prefix + "self_attention.",
                                     **mixer_kwargs)
        obj = cls(eps=eps, mixer=mixer, scan_fn=scan_fn, scan_backward_fn=scan_backward_fn)
        C = mixer.config.d_model
        for k in ("ln_1.weight", "ln_1.bias"):
            a = as_array(state_dict[prefix + k], f"state_dict[{k!r}]", allow_complex=False)
            obj.params[k] = check_shape(a, f"state_dict[{k!r}]", (C,)).copy()
        return obj


class MultiHeadSS2D(SS2D):
    """SS2D with the multi-head scan: the d_inner channels in K heads, head k read in order k.

    The data path is SS2D's except the core: instead of reading all D channels
    in each of K directions (K·D channels scanned), head k, the channels
    ``k·c .. k·c + c - 1`` (c = D / K), is read only in order k, and the heads
    are put back side by side (:func:`ssm_ref.vision.multi_head_merge`)::

        xs_k  = x[..., head k] read in order k         (B, c, L)
        dts, Bs, Cs = split(x_proj_weight[k] @ xs_k)   (B, R, L), (B, N, L), (B, N, L)
        y     = selective_scan over the D channels, one call, B/C grouped by head
        y[..., head k] = scatter(y_k, order k)         (B, H, W, D)

    Parameters
    ----------
    config : MambaConfig, optional
    directions : str or sequence, default ``"multihead"``
        A multi-head scheme of :data:`ssm_ref.vision.SCHEMES` (``reduce ==
        "concat"``), or a list of K scan-order names or ``(name, options)`` pairs,
        one per head.  d_inner must be a multiple of K.
    direction_options : dict, optional
        Options of the scheme.
    eps, seed, dtype, scan_fn, scan_backward_fn, **config_fields
        As in :class:`SS2D`.

    Attributes
    ----------
    params : mapping
        SS2D's names with per-head shapes: ``x_proj_weight`` (K, R+2N, c),
        ``dt_projs_weight`` (K, c, R), ``dt_projs_bias`` (K, c), ``A_logs`` (D, N),
        ``Ds`` (D,); the rest as in SS2D.

    Notes
    -----
    The scan cost is that of one direction (D channels), against K·D for
    SS2D with K directions; each head still sees the whole image.  The survey
    (Rahman et al. 2024, Section 3.2) names the multi-head scan without a
    reference design; this block is the library's, built on SS2D.

    Examples
    --------
    >>> import numpy as np
    >>> m = MultiHeadSS2D(d_model=4, d_state=2)      # d_inner 8: 4 heads of 2 channels
    >>> m(np.random.default_rng(0).standard_normal((1, 3, 5, 4))).shape
    (1, 3, 5, 4)
    >>> m.params["x_proj_weight"].shape, m.params["A_logs"].shape
    ((4, 5, 2), (8, 2))
    """

    def __init__(self, config=None, *, directions="multihead", **kwargs):
        super().__init__(config, directions=directions, **kwargs)

    def _set_directions(self, directions, direction_options):
        opts = dict(direction_options or {})
        if isinstance(directions, str):
            if directions not in SCHEMES or SCHEMES[directions].reduce != "concat":
                raise ValueError(f"Parameter directions = {directions!r} is not a multi-head "
                                 "scheme of SCHEMES (reduce 'concat') nor a list of scan orders")
            scan_scheme(directions, 4, 4, **opts)  # validates the options now

            def build(H, W):
                return scan_scheme(directions, H, W, **opts)
            label = directions
        else:
            if opts:
                raise ValueError("Parameter direction_options is only used with a scheme name")
            build, _, label = resolve_directions(list(directions), None)
        self._build, self.reduce, self.directions = build, "concat", label
        self.n_directions = count_directions(build)
        if self.config.d_inner % self.n_directions:
            raise ValueError(f"Parameter d_inner = {self.config.d_inner} does not split into "
                             f"K = {self.n_directions} heads (one per order)")

    def _heads(self):
        c = self.config.d_inner // self.n_directions
        return [slice(k * c, (k + 1) * c) for k in range(self.n_directions)]

    def _init_params(self, rng, dtype):
        c, K = self.config, self.n_directions
        heads = self._heads()
        per_head = [mamba_init(c, seed=rng) for _ in range(K)]  # Mamba's init, sliced per head
        p = super()._init_params(rng, dtype)
        p["x_proj_weight"] = np.stack([q["x_proj.weight"][:, sl]
                                       for q, sl in zip(per_head, heads)])  # (K, R+2N, c)
        p["dt_projs_weight"] = np.stack([q["dt_proj.weight"][sl]
                                         for q, sl in zip(per_head, heads)])  # (K, c, R)
        p["dt_projs_bias"] = np.stack([q["dt_proj.bias"][sl]
                                       for q, sl in zip(per_head, heads)])  # (K, c)
        p["A_logs"] = np.concatenate([q["A_log"][sl] for q, sl in zip(per_head, heads)])  # (D, N)
        p["Ds"] = np.concatenate([q["D"][sl] for q, sl in zip(per_head, heads)])  # (D,)
        return {key: v.astype(dtype) for key, v in p.items()}

    def _core_weights(self):
        A_logs = self._w("A_logs")
        return {"w_x": self._w("x_proj_weight"), "w_dt": self._w("dt_projs_weight"),
                "b_dt": self._w("dt_projs_bias").reshape(-1),  # (D,)
                "A": -array_module(A_logs).exp(A_logs), "D": self._w("Ds")}  # (D, N), (D,)

    def _head_perms(self, H, W):
        perms = [np.asarray(q, dtype=np.int64) for q in self._build(H, W)]
        for q in perms:
            if q.size != H * W:
                raise ValueError(f"directions {self.directions!r}: every head needs a full scan "
                                 f"order of the {H}x{W} grid, got one of length {q.size}")
        return perms

    def _core_forward(self, x_act, w):
        """Head k of x_act (B, H, W, D) read in order k; returns y (B, H, W, D) and a cache."""
        Bsz, H, W, D = x_act.shape
        c = self.config
        R, N, K = c.dt_rank, c.d_state, self.n_directions
        xp = array_module(x_act)
        perms, heads = self._head_perms(H, W), self._heads()
        projections, _ = projection_functions(self.scan_fn, self.scan_backward_fn)
        u = xp.empty((Bsz, D, H * W), x_act.dtype)  # (B, D, L): head k's sequences in its
        delta = xp.empty_like(u)  # channels, and its steps: the scan's inputs, no concatenation
        xs = [u[:, heads[k]] for k in range(K)]  # K × (B, c, L) views
        deltas = [delta[:, heads[k]] for k in range(K)]
        dts, Bs, Cs = [], [], []
        for k in range(K):
            xs[k][...] = to_sequence(x_act[..., heads[k]], perms[k],
                                     check=False).transpose(0, 2, 1)
            x_dbl, _ = projections(xs[k], w["w_x"][k], w["w_dt"][k], R,
                                   out=deltas[k])  # (B, R + 2N, L); delta into its view
            dts.append(x_dbl[:, :R])
            Bs.append(x_dbl[:, R:R + N])
            Cs.append(x_dbl[:, R + N:])
        y, kept = scan_keeping(self.scan_fn, u, delta, w["A"], xp.stack(Bs, axis=1),
                               xp.stack(Cs, axis=1), D=w["D"], z=None, delta_bias=w["b_dt"],
                               delta_softplus=True)  # (B, D, L); kept for the backward
        y = xp.asarray(y, dtype=np.float64)
        y_grid = xp.concatenate(
            [from_sequence(y[:, heads[k]].transpose(0, 2, 1), perms[k], H, W, check=False)
             for k in range(K)], axis=-1)  # (B, H, W, D): each head put back in place
        cache = {"perms": perms, "xs": xs, "dts": dts, "deltas": deltas, "Bs": Bs, "Cs": Cs,
                 "scan": kept}
        return y_grid, cache

    def _core_backward(self, dy_grid, cache, w):
        """Reverse of :meth:`_core_forward`: dx_act (B, H, W, D) and the core's grads."""
        Bsz, H, W, D = dy_grid.shape
        K = self.n_directions
        xp = array_module(dy_grid)
        perms, xs, heads = cache["perms"], cache["xs"], self._heads()
        dys = [to_sequence(dy_grid[..., heads[k]], perms[k], check=False).transpose(0, 2, 1)
               for k in range(K)]  # K × (B, c, L)
        s = scan_backward_kept(self.scan_backward_fn, xp.concatenate(dys, axis=1),
                               cache["scan"])
        s = {key: (None if v is None else xp.asarray(v, dtype=np.float64)) for key, v in s.items()}
        g = {"A_logs": s["A"] * w["A"],  # A = -exp(A_logs)
             "Ds": s["D"], "dt_projs_bias": s["delta_bias"].reshape(K, -1),
             "x_proj_weight": xp.zeros_like(w["w_x"]), "dt_projs_weight": xp.zeros_like(w["w_dt"])}
        _, projections_backward = projection_functions(self.scan_fn, self.scan_backward_fn)
        parts = []
        for k in range(K):
            sl = heads[k]
            dxs = s["u"][:, sl]  # (B, c, L): the scan's du, and the projections' added in place
            g["x_proj_weight"][k], g["dt_projs_weight"][k] = projections_backward(
                s["delta"][:, sl], s["B"][:, k], s["C"][:, k], xs[k], cache["dts"][k],
                w["w_x"][k], w["w_dt"][k], dxs)
            parts.append(from_sequence(dxs.transpose(0, 2, 1), perms[k], H, W,
                                       check=False))  # adjoint of the head's gather
        return xp.concatenate(parts, axis=-1), g
