"""Analysis tools for vision blocks: effective receptive fields and hidden-attention maps.

Glossary
--------
B        batch size (the matrix B is written ``Bmat`` where both meet)
H, W     height and width of a grid: the input image for a receptive field,
         the token grid for an attention map
h, w     height and width of the output feature map of a model or block
C        channels of the input image (C_out: of the output feature map)
L        sequence length, L = H·W
D        channels of a selective scan (``d_inner``)
N        state size per channel
perm     a scan order, ``seq[t] = tokens[perm[t]]`` (``ssm_ref.vision.scan_orders``)
query    the grid cell whose hidden-attention row is shown, ``(i, j)`` or ``p = i·W + j``
delta    the step size Δ of the scan, (B, D, L) in *sequence* order
alpha    the hidden-attention matrix (B, D, L, L) of ``ssm_ref.hidden_attention``

Two ways of asking "which input does an output look at":

* The **effective receptive field** (ERF; Luo et al. 2016, used by RepLKNet and
  by VMamba, Liu et al. 2024, arXiv:2401.10166, Fig. 1 and section 5): the gradient
  of one output position's features with respect to the input image,
  ``|d sum_c out[b, i0, j0, c] / d x[b, :, :, :]|`` summed over input channels and
  averaged over images (book equation ``eq-erf``).  It is computed here with the
  hand-derived backward passes of the blocks and models, not by finite
  differences (the tests check that the two agree).
* The **hidden-attention map** (Ali, Zimerman and Wolf 2024, arXiv:2403.01590):
  the row ``alpha[t_q, :]`` of the selective scan's hidden attention for the
  query's sequence position ``t_q = inverse(perm)[query]``, scattered back to the
  image grid through the scan order (``map[perm[s]] = alpha[t_q, s]``, book
  equation ``eq-attention-map``).  It is causal *in the scan order*: tokens the
  scan visits after the query get exactly zero.  Multi-direction blocks have
  one map per direction; they are merged as the block merges its outputs.

Everything is computed in float64; results come back in the input's dtype.
Plotting helpers import matplotlib only when called.

Book chapter: "Vision Mamba blocks" (label ``vision-blocks``).
"""
from __future__ import annotations

import numbers

import numpy as np

from .._validation import as_array, check_choice, check_finite, check_positive_scalar
from ..attention import hidden_attention
from .scan_orders import _as_index, to_sequence

__all__ = [
    "effective_receptive_field",
    "erf_high_contribution_ratio",
    "hidden_attention_map",
    "multi_direction_attention_maps",
    "mamba_attention_map",
    "vim_attention_maps",
    "ss2d_attention_maps",
    "plot_maps",
]


# --------------------------------------------------------------------------- helpers
def _grad_pair(model_or_fn):
    """Return ``run(x) -> (out, vjp)`` for the three accepted kinds of ``model_or_fn``."""
    if hasattr(model_or_fn, "forward_features") and hasattr(model_or_fn, "backward_features"):
        def run(x):
            out, cache = model_or_fn.forward_features(x, return_cache=True)
            return out, lambda dout: model_or_fn.backward_features(dout, cache)[0]
        return run
    if hasattr(model_or_fn, "forward") and hasattr(model_or_fn, "backward"):
        def run(x):
            out, cache = model_or_fn.forward(x, return_cache=True)

            def vjp(dout):
                res = model_or_fn.backward(dout, cache)
                return res[0] if isinstance(res, tuple) else res
            return out, vjp
        return run
    if callable(model_or_fn):
        return model_or_fn
    raise TypeError(
        f"Parameter model_or_fn is a {type(model_or_fn).__name__}; expected a model with "
        "forward_features/backward_features, a block with forward(x, return_cache=True)/"
        "backward(dout, cache), or a callable fn(x) -> (out, vjp)"
    )


def _query_index(query, H, W):
    """Row-major flat index of ``query`` given as ``(i, j)`` or an int."""
    if isinstance(query, (tuple, list)) and len(query) == 2:
        i, j = query
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (i, j)):
            raise TypeError(f"Parameter query = {query!r} must hold two integers (i, j)")
        if not (0 <= i < H and 0 <= j < W):
            raise ValueError(f"Parameter query = {query!r} lies outside the {H}x{W} grid")
        return int(i) * W + int(j)
    if isinstance(query, numbers.Integral) and not isinstance(query, bool):
        if not 0 <= query < H * W:
            raise ValueError(f"Parameter query = {query} must lie in [0, {H * W - 1}] (H·W = {H * W})")
        return int(query)
    raise TypeError(f"Parameter query = {query!r} must be a cell (i, j) or a flat index i·W + j")


# --------------------------------------------------------------------------- receptive field
def effective_receptive_field(model_or_fn, x, *, output=None, objective="relu_sum",
                              normalize="max", log=False):
    """Effective receptive field of one output position, from the hand-derived backward pass.

    Parameters
    ----------
    model_or_fn : model, block or callable
        One of

        * a model with ``forward_features(x, return_cache=True) -> (feat, cache)``
          and ``backward_features(dfeat, cache) -> (dx, grads)`` (the tiny models
          of :mod:`ssm_ref.vision.models`: the feature map before pooling / head);
        * a block with ``forward(x, return_cache=True) -> (out, cache)`` and
          ``backward(dout, cache)`` returning ``(dx, grads)`` or ``dx``, whose
          output is an image (B, h, w, C_out) (the VSS block, a convolution stack);
        * a callable ``fn(x) -> (out, vjp)`` with ``vjp(dout) -> dx``.
    x : array_like, shape (B, H, W, C)
        Input images (the average is over the B images).
    output : tuple (i0, j0), optional
        The output position; default the centre ``(h // 2, w // 2)`` of the
        output map, as in VMamba.
    objective : {"relu_sum", "sum"}, default "relu_sum"
        What is differentiated at that position: ``sum_k relu(out[b, i0, j0, k])``
        (the code of RepLKNet and VMamba) or the plain channel sum.
    normalize : {"max", "sum", None}, default "max"
        Divide by the largest entry (maps in [0, 1]), by the total (a
        distribution), or leave the raw gradient magnitudes.
    log : bool, default False
        Apply ``log10(1 + erf)`` before normalising (RepLKNet's display
        transform, which makes weak long-range contributions visible).

    Returns
    -------
    erf : ndarray, shape (H, W)
        ``mean_b sum_c |d f(out[b, i0, j0, :]) / d x[b, :, :, c]|`` with ``f`` the
        objective, in ``x``'s dtype.

    Raises
    ------
    ValueError
        ``x`` not (B, H, W, C) or not finite; the output is not 4-D; ``output``
        outside the output map; unknown ``normalize``; an all-zero gradient
        with a normalisation.
    TypeError
        ``model_or_fn`` of none of the three kinds.
    ValueError
        Unknown ``objective``.

    Notes
    -----
    Implements ``eq-erf``.  One backward pass per call: the upstream gradient is
    one at ``out[:, i0, j0, :]`` (masked by ``out > 0`` for ``"relu_sum"``) and
    zero elsewhere, so ``dx[b]`` is the gradient of image b's own output
    (images do not interact).  VMamba (its Fig. 1) and RepLKNet average over
    50 validation images and show ``log10(1 + erf)`` normalised.  Do not take
    the plain sum of a LayerNorm output: with unit weight and zero bias it is
    constant and its gradient vanishes.

    References
    ----------
    W. Luo, Y. Li, R. Urtasun and R. Zemel, "Understanding the Effective
    Receptive Field in Deep Convolutional Neural Networks", NeurIPS 2016;
    X. Ding et al., "Scaling Up Your Kernels to 31x31" (RepLKNet), CVPR 2022;
    Y. Liu et al., "VMamba: Visual State Space Model", arXiv:2401.10166.

    Examples
    --------
    A single 3x3 box filter sees exactly the 3x3 neighbourhood of the centre:

    >>> import numpy as np
    >>> def box(x):
    ...     w = np.ones((1, 3, 3))
    ...     from ssm_ref import depthwise_conv2d, depthwise_conv2d_backward
    ...     return depthwise_conv2d(x, w), lambda d: depthwise_conv2d_backward(d, x, w)[0]
    >>> erf = effective_receptive_field(box, np.ones((2, 5, 5, 1)))
    >>> erf.astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]])
    """
    run = _grad_pair(model_or_fn)
    x = as_array(x, "x", allow_complex=False, ndim=4)
    check_finite(x, "x")
    check_choice(objective, "objective", ("relu_sum", "sum"))
    if normalize is not None:
        check_choice(normalize, "normalize", ("max", "sum"))
    out, vjp = run(x)
    out = np.asarray(out)
    if out.ndim != 4:
        raise ValueError(
            f"the output of model_or_fn has shape {out.shape} but should be a feature "
            "map (B, h, w, C_out)"
        )
    h, w = out.shape[1:3]
    i0, j0 = (h // 2, w // 2) if output is None else output
    if not (isinstance(i0, numbers.Integral) and isinstance(j0, numbers.Integral)
            and 0 <= i0 < h and 0 <= j0 < w):
        raise ValueError(f"Parameter output = {output!r} lies outside the {h}x{w} output map")
    dout = np.zeros(out.shape, dtype=np.float64)  # (B, h, w, C_out)
    dout[:, i0, j0, :] = 1.0  # d(sum of the chosen position's features)
    if objective == "relu_sum":
        dout[:, i0, j0, :] *= out[:, i0, j0, :] > 0  # relu'(out)
    dx = np.asarray(vjp(dout.astype(out.dtype)), dtype=np.float64)  # (B, H, W, C)
    if dx.shape != x.shape:
        raise ValueError(f"the backward pass returned dx of shape {dx.shape}, expected {x.shape}")
    erf = np.abs(dx).sum(axis=3).mean(axis=0)  # (H, W)
    if log:
        erf = np.log10(1.0 + erf)
    if normalize is not None:
        scale = erf.max() if normalize == "max" else erf.sum()
        if scale == 0:
            raise ValueError("the gradient is zero everywhere; the receptive field cannot be normalised")
        erf = erf / scale
    return erf.astype(x.dtype)


def erf_high_contribution_ratio(erf, threshold=0.5):
    """Area ratio of the smallest centred rectangle holding ``threshold`` of the ERF's mass.

    RepLKNet's summary of an ERF map: grow a rectangle around the centre one
    pixel per side at a time until it holds at least ``threshold`` of the total
    contribution, and report its area as a fraction of the image.  A small
    ratio means a local receptive field, a ratio near ``threshold`` a
    uniform one.

    Parameters
    ----------
    erf : array_like, shape (H, W)
        A non-negative map (from :func:`effective_receptive_field`).
    threshold : float in (0, 1], default 0.5

    Returns
    -------
    float

    Raises
    ------
    ValueError
        ``erf`` not 2-D, negative, all zero or not finite; ``threshold`` not in (0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((5, 5)); m[2, 2] = 1.0
    >>> erf_high_contribution_ratio(m, 0.9)  # all mass in the centre pixel
    0.04
    >>> erf_high_contribution_ratio(np.ones((5, 5)), 1.0)
    1.0
    """
    erf = as_array(erf, "erf", allow_complex=False, ndim=2)
    check_finite(erf, "erf")
    threshold = check_positive_scalar(threshold, "threshold")
    if threshold > 1:
        raise ValueError(f"Parameter threshold = {threshold} must be in (0, 1]")
    if np.any(erf < 0) or erf.sum() == 0:
        raise ValueError("Parameter erf must be non-negative with a positive total")
    H, W = erf.shape
    total = erf.astype(np.float64).sum()
    ci, cj = H // 2, W // 2
    for r in range(max(H, W)):
        top, bottom = max(ci - r, 0), min(ci + r + 1, H)
        left, right = max(cj - r, 0), min(cj + r + 1, W)
        if erf[top:bottom, left:right].sum() >= threshold * total * (1 - 1e-12):
            return (bottom - top) * (right - left) / (H * W)
    return 1.0


# --------------------------------------------------------------------------- hidden attention
def hidden_attention_map(delta, A, B, C, perm, H, W, query, *, delta_bias=None,
                         delta_softplus=False, channel_reduce="mean", absolute=False):
    """The hidden-attention row of one query cell, drawn on the image grid.

    Parameters
    ----------
    delta : array_like, shape (B, D, L)
        Step sizes of the scan, in sequence order (the scan saw
        ``to_sequence(x, perm)``); its dtype is the result's.
    A : array_like, shape (D, N)
    B, C : array_like
        Constant (D, N), variable (B, N, L) or grouped (B, G, N, L), as in
        :func:`ssm_ref.hidden_attention`, in sequence order.
    perm : array_like of int, shape (L,)
        The scan order with which the sequence was made from the H×W grid:
        a full order (L = H·W) or part of the grid (one ES2D sub-grid; the
        cells it does not visit get zero).
    H, W : int
        Grid size.
    query : tuple (i, j) or int
        The query cell, on the grid (not a sequence position).
    delta_bias : array_like, shape (D,), optional
    delta_softplus : bool, default False
        As in the scan.
    channel_reduce : {"mean", "sum", None}, default "mean"
        How to combine the D channels' maps (None keeps them).
    absolute : bool, default False
        Take ``|alpha|`` before reducing over channels (weights can be negative).

    Returns
    -------
    amap : ndarray, shape (B, H, W), or (B, D, H, W) with ``channel_reduce=None``
        ``amap[b, ..., i, j]`` is the weight of the input at cell (i, j) in the
        scan's output at the query cell.

    Raises
    ------
    ValueError, TypeError
        Bad scan inputs (as :func:`ssm_ref.hidden_attention`); ``perm`` with
        repeated or out-of-grid cells, or a length other than L; ``query``
        outside the grid; unknown ``channel_reduce``.

    Notes
    -----
    Implements ``eq-attention-map``: with ``t_q = inverse(perm)[query]``,
    ``amap[perm[s]] = alpha[t_q, s]``.  Cells visited after the query
    (``s > t_q``) get zero; a reversed order shows the mirror image.  When
    ``perm`` covers only part of the grid and misses the query, the whole map
    is zero (that sequence's outputs never land on the query cell).  The map
    leaves out the skip ``D`` (a weight on the query cell itself) and the
    gate, as the hidden-attention matrix does.

    References
    ----------
    A. Ali, I. Zimerman and L. Wolf, "The Hidden Attention of Mamba Models",
    arXiv:2403.01590, 2024 (maps of Vim's hidden attention, their Fig. 4).

    Examples
    --------
    One channel, one state, a raster scan on a 2x2 grid: the top-right cell
    (t = 1) sees the top-left one and itself, not the bottom row.

    >>> import numpy as np
    >>> from ssm_ref.vision import scan_order
    >>> amap = hidden_attention_map(np.full((1, 1, 4), 0.5), [[-1.0]], [[1.0]], [[1.0]],
    ...                             scan_order("raster", 2, 2), 2, 2, query=(0, 1))
    >>> amap[0]
    array([[0.30326533, 0.5       ],
           [0.        , 0.        ]])
    """
    if channel_reduce is not None:
        check_choice(channel_reduce, "channel_reduce", ("mean", "sum"))
    delta_arr = as_array(delta, "delta", allow_complex=False, ndim=3)
    L = delta_arr.shape[2]
    for name, v in (("H", H), ("W", W)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"Parameter {name} = {v!r} must be a positive integer")
    perm = _as_index(perm, "perm", n_cells=H * W, full=False)
    if perm.size != L:
        raise ValueError(f"Parameter perm has length {perm.size} but delta has L = {L} tokens "
                         f"(a full scan order of the {H}x{W} grid has H·W = {H * W})")
    p_q = _query_index(query, H, W)
    alpha = hidden_attention(delta_arr, A, B, C, delta_bias=delta_bias,
                             delta_softplus=delta_softplus)  # (B, D, L, L)
    out_dtype = alpha.dtype
    alpha = alpha.astype(np.float64)
    grid = np.zeros(alpha.shape[:2] + (H * W,))  # (B, D, H·W) weights of grid cells p
    where = np.flatnonzero(perm == p_q)
    if where.size:  # the query is in this sequence
        t_q = int(where[0])  # sequence position of the query cell
        row = alpha[:, :, t_q, :]  # (B, D, L) weights of sequence positions s
        for s in range(L):
            grid[:, :, perm[s]] = row[:, :, s]
    if absolute:
        grid = np.abs(grid)
    if channel_reduce == "mean":
        grid = grid.mean(axis=1)  # (B, L)
    elif channel_reduce == "sum":
        grid = grid.sum(axis=1)  # (B, L)
    return grid.reshape(grid.shape[:-1] + (H, W)).astype(out_dtype)  # (B, [D,] H, W)


def multi_direction_attention_maps(directions, H, W, query, *, merge="sum", **kwargs):
    """Hidden-attention maps of a multi-direction scan, one per direction, and merged.

    Parameters
    ----------
    directions : sequence of dict
        One dict per direction with the keys ``delta``, ``A``, ``B``, ``C``,
        ``perm`` and optionally ``delta_bias`` and ``delta_softplus`` (the
        arguments of :func:`hidden_attention_map` for that direction's scan).
    H, W : int
    query : tuple (i, j) or int
    merge : {"sum", "mean"}, default "sum"
        How the block merges its directions (VMamba sums, Vim averages).
    **kwargs
        ``channel_reduce`` and ``absolute``, passed on.

    Returns
    -------
    maps : ndarray, shape (K, B, H, W)
        One map per direction.
    merged : ndarray, shape (B, H, W)

    Raises
    ------
    ValueError
        An empty list, a direction missing a key, unknown ``merge``; and
        whatever :func:`hidden_attention_map` raises.

    Notes
    -----
    Because each direction's output at the query is a linear function of its
    own input sequence (with the delta, B, C fixed), the merged map is the
    weight of each cell in the merged output: ``eq-attention-map`` summed (or
    averaged) over directions.  A raster and a reversed raster together cover
    the whole image, which is why Vim and VMamba scan in several directions.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref.vision import scan_order
    >>> d = dict(delta=np.full((1, 1, 4), 0.5), A=[[-1.0]], B=[[1.0]], C=[[1.0]])
    >>> dirs = [dict(d, perm=scan_order("raster", 2, 2)),
    ...         dict(d, perm=scan_order("raster_reversed", 2, 2))]
    >>> maps, merged = multi_direction_attention_maps(dirs, 2, 2, query=(0, 1))
    >>> maps.shape, bool(np.all(merged > 0))
    ((2, 1, 2, 2), True)
    """
    check_choice(merge, "merge", ("sum", "mean"))
    if len(directions) == 0:
        raise ValueError("Parameter directions is empty; give at least one direction")
    maps = []
    for k, d in enumerate(directions):
        missing = [key for key in ("delta", "A", "B", "C", "perm") if key not in d]
        if missing:
            raise ValueError(f"Parameter directions[{k}] is missing the keys {missing}")
        maps.append(hidden_attention_map(
            d["delta"], d["A"], d["B"], d["C"], d["perm"], H, W, query,
            delta_bias=d.get("delta_bias"), delta_softplus=d.get("delta_softplus", False),
            **kwargs))
    maps = np.stack(maps)  # (K, B, H, W)
    merged = maps.sum(axis=0) if merge == "sum" else maps.mean(axis=0)  # (B, H, W)
    return maps, merged


def mamba_attention_map(block, x, perm, query, **kwargs):
    """Hidden-attention map of a Mamba block run over an image in the scan order ``perm``.

    The image tokens are gathered into a sequence with ``perm``, run through
    ``block`` (a :class:`ssm_ref.MambaBlock`), and the scan's delta, B and C
    are read from the block's cache; the map is :func:`hidden_attention_map`
    of the query cell.

    Parameters
    ----------
    block : MambaBlock
        Or any block whose ``forward(seq, return_cache=True)`` cache holds
        ``delta``, ``Bmat``, ``Cmat`` (B, D|N, L) and whose ``params`` hold
        ``A_log`` and ``dt_proj.bias`` (the official names).
    x : array_like, shape (B, H, W, d_model)
        Image tokens on the grid.
    perm : array_like of int, shape (H·W,)
    query : tuple (i, j) or int
    **kwargs
        ``channel_reduce``, ``absolute``: passed to :func:`hidden_attention_map`.

    Returns
    -------
    amap : ndarray, shape (B, H, W) (or (B, D, H, W) with ``channel_reduce=None``)

    Raises
    ------
    ValueError
        ``x`` not 4-D, ``perm`` not a scan order of its grid, ``query`` outside.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import MambaBlock
    >>> from ssm_ref.vision import scan_order
    >>> block = MambaBlock(d_model=4, d_state=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((1, 3, 3, 4))
    >>> amap = mamba_attention_map(block, x, scan_order("raster", 3, 3), query=(1, 1))
    >>> bool(np.all(amap[0].ravel()[5:] == 0))  # raster: cells after the centre get nothing
    True
    """
    x = as_array(x, "x", allow_complex=False, ndim=4)
    _, H, W, _ = x.shape
    perm = _as_index(perm, "perm", n_cells=H * W, full=True)
    seq = to_sequence(x, perm)  # (B, L, d_model)
    _, cache = block.forward(seq, return_cache=True)
    A = -np.exp(np.asarray(block.params["A_log"], dtype=np.float64))  # (D, N)
    return hidden_attention_map(cache["delta"], A, cache["Bmat"], cache["Cmat"], perm, H, W,
                                query, delta_bias=block.params["dt_proj.bias"],
                                delta_softplus=True, **kwargs).astype(x.dtype)


def vim_attention_maps(mixer, x, perm, query, **kwargs):
    """Hidden-attention maps of Vim's bidirectional mixer run over an image in order ``perm``.

    Parameters
    ----------
    mixer : VimMixer
        Or a :class:`ssm_ref.vision.VimBlock` (its RMSNorm is applied first).
    x : array_like, shape (B, H, W, d_model)
        Image tokens on the grid (no class token).
    perm : array_like of int, shape (H·W,)
        The scan order the tokens are flattened in.
    query : tuple (i, j) or int
    **kwargs
        ``channel_reduce``, ``absolute``: passed to :func:`hidden_attention_map`.

    Returns
    -------
    maps : ndarray, shape (2, B, H, W)
        The forward path's map and the backward path's (which reads the
        sequence flipped, i.e. in the order ``perm[::-1]``).
    merged : ndarray, shape (B, H, W)
        Their mean (Vim averages the two outputs).

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref.vision import VimMixer, scan_order
    >>> mixer = VimMixer(d_model=4, d_state=2)
    >>> x = np.random.default_rng(0).standard_normal((1, 3, 3, 4))
    >>> maps, merged = vim_attention_maps(mixer, x, scan_order("raster", 3, 3), (1, 1))
    >>> bool(np.all(maps[0, 0].ravel()[5:] == 0)), bool(np.all(maps[1, 0].ravel()[:4] == 0))
    (True, True)
    """
    x = as_array(x, "x", allow_complex=False, ndim=4)
    _, H, W, _ = x.shape
    perm = _as_index(perm, "perm", n_cells=H * W, full=True)
    if hasattr(mixer, "mixer") and "norm.weight" in getattr(mixer, "params", {}):  # a VimBlock
        from ..nn import rms_norm
        x = rms_norm(x, mixer.params["norm.weight"], mixer.eps)
        mixer = mixer.mixer
    _, cache = mixer.forward(to_sequence(x, perm), return_cache=True)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in mixer.params.items()}
    dirs = [dict(delta=cache["f"]["delta"], A=-np.exp(p["A_log"]), B=cache["f"]["Bmat"],
                 C=cache["f"]["Cmat"], delta_bias=p["dt_proj.bias"], delta_softplus=True,
                 perm=perm),
            dict(delta=cache["b"]["delta"], A=-np.exp(p["A_b_log"]), B=cache["b"]["Bmat"],
                 C=cache["b"]["Cmat"], delta_bias=p["dt_proj_b.bias"], delta_softplus=True,
                 perm=perm[::-1].copy())]
    return multi_direction_attention_maps(dirs, H, W, query, merge="mean", **kwargs)


def ss2d_attention_maps(mixer, x, query, **kwargs):
    """Hidden-attention maps of an SS2D mixer (VMamba, LocalMamba, ES2D), per direction and merged.

    Parameters
    ----------
    mixer : SS2D
        Or a :class:`ssm_ref.vision.VSSBlock` (its ``ln_1`` is applied first).
    x : array_like, shape (B, H, W, d_model)
        The mixer's input.
    query : tuple (i, j) or int
    **kwargs
        ``channel_reduce``, ``absolute``: passed to :func:`hidden_attention_map`.

    Returns
    -------
    maps : ndarray, shape (K, B, H, W)
        One map per direction, from that direction's delta, B and C in the
        mixer's cache.
    merged : ndarray, shape (B, H, W)
        Merged as the mixer merges its outputs (sum, or mean over the visits of
        each cell).

    Notes
    -----
    The maps describe the scans, which read the convolved activations
    ``silu(conv2d(in_proj(x)))``; the 3x3 convolution before them widens
    every map by one cell (see the receptive fields).  For ES2D only the
    sub-grid holding the query contributes.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref.vision import SS2D
    >>> ss2d = SS2D(d_model=4, d_state=2)
    >>> x = np.random.default_rng(0).standard_normal((1, 3, 3, 4))
    >>> maps, merged = ss2d_attention_maps(ss2d, x, (1, 1), absolute=True)
    >>> maps.shape, bool(np.all(merged > 0))
    ((4, 1, 3, 3), True)
    """
    x = as_array(x, "x", allow_complex=False, ndim=4)
    if hasattr(mixer, "self_attention"):  # a VSSBlock
        from ..nn import layer_norm
        x = layer_norm(x, mixer.params["ln_1.weight"], mixer.params["ln_1.bias"], mixer.eps)
        mixer = mixer.self_attention
    _, H, W, _ = x.shape
    _, cache = mixer.forward(x, return_cache=True)
    core = cache["core"]
    D = mixer.config.d_inner
    A = -np.exp(np.asarray(mixer.params["A_logs"], dtype=np.float64))  # (K·D, N)
    bias = np.asarray(mixer.params["dt_projs_bias"], dtype=np.float64)  # (K, D)
    dirs = []
    for k, perm in enumerate(core["perms"]):
        dirs.append(dict(delta=core["deltas"][k], A=A[k * D:(k + 1) * D], B=core["Bs"][k],
                         C=core["Cs"][k], delta_bias=bias[k], delta_softplus=True, perm=perm))
    maps, merged = multi_direction_attention_maps(dirs, H, W, query, merge="sum", **kwargs)
    if mixer.reduce == "mean":
        count = np.asarray(core["count"]).reshape(1, H, W)  # visits of each cell
        merged = merged / count
    return maps, merged.astype(maps.dtype)


# --------------------------------------------------------------------------- plotting
def plot_maps(maps, titles=None, *, query=None, ncols=None, cmap="magma", size=2.0,
              suptitle=None, colorbar=False):
    """Draw a row (or grid) of 2-D maps: receptive fields or attention maps.

    Parameters
    ----------
    maps : sequence of array_like, each (H, W)
    titles : sequence of str, optional
    query : tuple (i, j), optional
        Marked with a cyan cross on every map (the query cell or ERF centre).
    ncols : int, optional
        Maps per row (default: all in one row).
    cmap : str, default "magma"
    size : float, default 2.0
        Inches per panel.
    suptitle : str, optional
    colorbar : bool, default False

    Returns
    -------
    fig : matplotlib Figure

    Notes
    -----
    Matplotlib is imported here, so ``ssm_ref`` does not need it.  Each panel
    has its own colour scale.
    """
    import matplotlib.pyplot as plt

    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    for k, m in enumerate(maps):
        if m.ndim != 2:
            raise ValueError(f"Parameter maps[{k}] has shape {m.shape} but should be (H, W)")
    n = len(maps)
    if n == 0:
        raise ValueError("Parameter maps is empty")
    if titles is not None and len(titles) != n:
        raise ValueError(f"Parameter titles has {len(titles)} entries but maps has {n}")
    ncols = n if ncols is None else min(int(ncols), n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3),
                             squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.axis("off")
            continue
        im = ax.imshow(maps[k], cmap=cmap)
        if query is not None:
            ax.plot(query[1], query[0], marker="x", color="cyan", markersize=8, mew=2)
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if colorbar:
            fig.colorbar(im, ax=ax, fraction=0.046)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
