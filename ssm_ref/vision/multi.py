"""Multi-direction scans: several scan orders of one image, and how their outputs are merged.

Glossary
--------
B        batch size
H, W     height and width of the token grid
C        channels of a token
L        sequence length, L = H·W (L_k for the k-th of several partial sequences)
K        number of directions (sequences) in a scheme
perm     a scan order, ``seq[t] = tokens[perm[t]]`` (see ``ssm_ref.vision.scan_orders``)

A vision-Mamba block scans one image in K directions, runs a selective scan over
each sequence, and merges the K outputs back onto the grid::

    xs[:, k] = to_sequence(x, perms[k])                      (multi_scan)
    out = sum_k from_sequence(ys[:, k], perms[k], H, W)      (multi_merge, reduce="sum")

``reduce="mean"`` divides every cell by the number of sequences that visit it.
Token arrays may be NumPy or CuPy (results come back on the same module); the
orders are NumPy index arrays, checked on the host, whose device copies are
made once and cached by ``to_sequence`` / ``from_sequence``.
The named schemes of the literature are data in :data:`SCHEMES`; each says how
its directions are merged and whether they share parameters (that lives in the
block that uses the scheme, not here).  A video (F, H, W) is scanned as the
(F·H, W) grid of its stacked frames (schemes ``"vivim"``, ``"st_bidirectional"``,
option ``frames``).  The multi-head scan (:func:`multi_head_scan`,
:func:`multi_head_merge`, scheme ``"multihead"``) reads each group of channels in
its own order instead of all channels in every order.

Book chapter: "Images as sequences" (label ``images-as-sequences``); survey:
Rahman et al. 2024, arXiv:2410.03105, Section 3.2 and Figure 5.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .._validation import check_choice, check_positive_int
from .._xp import array_module, on_module_cached
from .scan_orders import (
    _as_index,
    _check_options,
    _check_tokens,
    atrous_subgrids,
    from_sequence,
    scan_order,
    scan_order_3d,
    to_sequence,
)

__all__ = [
    "CROSS_SCAN_ORDERS",
    "cross_scan",
    "cross_merge",
    "multi_scan",
    "multi_merge",
    "ScanScheme",
    "SCHEMES",
    "scan_scheme",
    "multi_head_scan",
    "multi_head_merge",
]

#: VMamba's four directions, in the order of its CrossScan.
CROSS_SCAN_ORDERS = ("raster", "column", "raster_reversed", "column_reversed")


def _check_image(x, name="x"):
    x = _check_tokens(x, name)
    if x.ndim != 4:
        raise ValueError(f"Parameter {name} has shape {tuple(x.shape)} but should be (B, H, W, C)")
    return x


def cross_scan(x):
    """VMamba's cross-scan: four sequences of an image, (B, H, W, C) -> (B, 4, L, C).

    Parameters
    ----------
    x : ndarray, shape (B, H, W, C)

    Returns
    -------
    xs : ndarray, shape (B, 4, H·W, C)
        ``xs[:, k]`` is ``x`` read in ``CROSS_SCAN_ORDERS[k]``: row-major,
        column-major, row-major reversed, column-major reversed.  Same dtype as x.

    Raises
    ------
    ValueError
        ``x`` is not 4-D.

    Notes
    -----
    VMamba's CrossScan flattens the (B, C, H, W) map, flattens its H/W transpose,
    and flips both; this is the same with channels last.  The column direction
    of a non-square map is un-permuted on the merge with the W×H transpose,
    which ``cross_merge`` does through the inverse permutation.

    References
    ----------
    Liu et al. 2024, VMamba, arXiv:2401.10166 (SS2D, CrossScan/CrossMerge).

    Examples
    --------
    >>> x = np.arange(6.0).reshape(1, 2, 3, 1)
    >>> cross_scan(x)[0, :, :, 0].tolist()
    [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 3.0, 1.0, 4.0, 2.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [5.0, 2.0, 4.0, 1.0, 3.0, 0.0]]
    """
    x = _check_image(x)
    _, H, W, _ = x.shape
    perms = [scan_order(name, H, W) for name in CROSS_SCAN_ORDERS]
    return multi_scan(x, perms)  # (B, 4, L, C)


def cross_merge(ys, H, W):
    """VMamba's cross-merge: sum the four directions back, (B, 4, L, C) -> (B, H, W, C).

    Parameters
    ----------
    ys : ndarray, shape (B, 4, H·W, C)
        Outputs of the four scans, in the order of ``cross_scan``.
    H, W : int

    Returns
    -------
    y : ndarray, shape (B, H, W, C)
        ``sum_k from_sequence(ys[:, k], perm_k, H, W)``; same dtype as ys.

    Raises
    ------
    ValueError
        ``ys`` not (B, 4, H·W, C).

    Notes
    -----
    ``cross_merge(cross_scan(x), H, W) == 4 * x``: each cell is visited once by
    each of the four directions.

    References
    ----------
    Liu et al. 2024, VMamba, arXiv:2401.10166.

    Examples
    --------
    >>> x = np.ones((1, 2, 3, 1))
    >>> cross_merge(cross_scan(x), 2, 3)[0, :, :, 0].tolist()
    [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]]
    """
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    ys = _check_tokens(ys, "ys")
    if ys.ndim != 4 or ys.shape[1] != 4 or ys.shape[2] != H * W:
        raise ValueError(
            f"Parameter ys has shape {tuple(ys.shape)} but should be (B, 4, {H * W}, C) "
            f"(four directions of H·W = {H}·{W} tokens)"
        )
    perms = [scan_order(name, H, W) for name in CROSS_SCAN_ORDERS]
    return multi_merge(ys, perms, H, W, reduce="sum")  # (B, H, W, C)


def multi_scan(x, orders, *, stack=True):
    """Read one image in several scan orders.

    Parameters
    ----------
    x : ndarray, shape (B, H, W, C) or (B, L, C)
    orders : sequence of array_like of int
        K index arrays (full scan orders, or disjoint parts of the grid such
        as ES2D's sub-grids).
    stack : bool, optional
        True (default): return one array (B, K, L, C); all orders must then
        have the same length.  False: return a list of K arrays (B, L_k, C).

    Returns
    -------
    xs : ndarray (B, K, L, C) or list of ndarray (B, L_k, C)
        Same dtype as ``x``.

    Raises
    ------
    ValueError
        ``orders`` empty; an order invalid for the grid; unequal lengths with
        ``stack=True``; ``x`` not 3-D or 4-D.

    Examples
    --------
    >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
    >>> perms = scan_scheme("vim_bidirectional", 2, 2)
    >>> multi_scan(x, perms)[0, :, :, 0].tolist()
    [[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]
    """
    x = _check_tokens(x, "x")
    orders = _check_orders(orders)
    seqs = [to_sequence(x, perm) for perm in orders]  # K × (B, L_k, C)
    if not stack:
        return seqs
    lengths = [s.shape[1] for s in seqs]
    if len(set(lengths)) != 1:
        raise ValueError(
            f"Parameter orders has sequences of lengths {lengths}, which cannot be stacked "
            "into (B, K, L, C); pass stack=False to get a list"
        )
    return array_module(x).stack(seqs, axis=1)  # (B, K, L, C) on x's device


def _check_orders(orders):
    if isinstance(orders, np.ndarray) and orders.ndim == 1:
        raise ValueError(
            f"Parameter orders has shape {orders.shape} but should be a list of K "
            "index arrays (wrap a single order in a list)"
        )
    orders = list(orders)
    if not orders:
        raise ValueError("Parameter orders is empty but should hold at least one scan order")
    return orders


def multi_merge(ys, orders, H, W, reduce="sum"):
    """Scatter K sequences back onto the grid and combine them.

    Parameters
    ----------
    ys : ndarray (B, K, L, C), or sequence of K ndarrays (B, L_k, C)
        The per-direction outputs, in the order of ``orders``.
    orders : sequence of array_like of int
        The K index arrays the sequences were gathered with.
    H, W : int
    reduce : {"sum", "mean"}
        ``"sum"``: add the K scattered outputs (VMamba).  ``"mean"``: divide each
        cell by the number of sequences that visit it (Vim's average of its two
        directions).

    Returns
    -------
    y : ndarray, shape (B, H, W, C)
        Same dtype as ``ys``.

    Raises
    ------
    ValueError
        Unknown ``reduce``; K of ``ys`` not ``len(orders)``; a sequence whose
        length is not its order's; orders that together miss some of the H·W
        cells (which is what a wrong H or W gives); wrong number of dimensions.

    Notes
    -----
    Implements the merge ``out[perm[t]] += y[t]`` of eq-scan-scatter summed over
    directions.  ``multi_merge(multi_scan(x, perms), perms, H, W, "mean") == x``
    for any set of full scan orders.

    Examples
    --------
    >>> x = np.arange(6.0).reshape(1, 2, 3, 1)
    >>> perms = scan_scheme("omnidirectional", 2, 3)
    >>> y = multi_merge(multi_scan(x, perms), perms, 2, 3, reduce="mean")
    >>> bool(np.array_equal(y, x))
    True
    """
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    check_choice(reduce, "reduce", ("sum", "mean"))
    orders = _check_orders(orders)
    K = len(orders)
    if isinstance(ys, (list, tuple)):
        seqs = [_check_tokens(s, f"ys[{k}]") for k, s in enumerate(ys)]
        if len(seqs) != K:
            raise ValueError(f"Parameter ys holds {len(seqs)} sequences but orders has {K}")
        for k, s in enumerate(seqs):
            if s.ndim != 3:
                raise ValueError(
                    f"Parameter ys[{k}] has shape {tuple(s.shape)} but should be (B, L, C)"
                )
    else:
        ys = _check_tokens(ys, "ys")
        if ys.ndim != 4 or ys.shape[1] != K:
            raise ValueError(
                f"Parameter ys has shape {tuple(ys.shape)} but should be (B, {K}, L, C) "
                f"(one sequence per order, K = {K})"
            )
        seqs = [ys[:, k] for k in range(K)]  # K × (B, L, C)
    out = None
    count = np.zeros(H * W, dtype=np.int64)  # (L,) how many sequences visit each cell
    for k in range(K):
        perm = _as_index(orders[k], f"orders[{k}]", n_cells=H * W, full=False)
        y_k = from_sequence(seqs[k], perm, H, W)  # (B, H, W, C)
        out = y_k if out is None else out + y_k
        count[perm] += 1
    if np.any(count == 0):
        raise ValueError(
            f"Parameter orders visits only {int(np.count_nonzero(count))} of the H·W = "
            f"{H}·{W} = {H * W} cells; together the orders must cover the grid "
            "(are H and W right?)"
        )
    if reduce == "mean":
        if np.all(count == count[0]):
            out = out / int(count[0])  # every cell visited equally often (full orders): / K
        else:
            scale = 1.0 / count  # (L,) every count >= 1 (checked above)
            scale = scale.reshape(1, H, W, 1).astype(out.dtype)  # (1, H, W, 1)
            out = out * on_module_cached(scale, array_module(out))  # (B, H, W, C)
    return out


# ---------------------------------------------------------------------------
# Multi-head scan: channels in heads, one order per head
# ---------------------------------------------------------------------------

def _head_slices(C, K):
    if C % K:
        raise ValueError(f"Parameter x has C = {C} channels, which do not split into "
                         f"K = {K} heads (one per order); C must be a multiple of K")
    c = C // K
    return [slice(k * c, (k + 1) * c) for k in range(K)]


def multi_head_scan(x, orders):
    """The multi-head scan: split the channels into K heads, read head k in ``orders[k]``.

    Parameters
    ----------
    x : ndarray, shape (B, H, W, C) or (B, L, C)
        Tokens, channels last; C a multiple of K.
    orders : sequence of K array_like of int
        One full scan order (a permutation of the L = H·W cells) per head.

    Returns
    -------
    xs : ndarray, shape (B, K, L, C // K)
        ``xs[:, k, t] = x[:, orders[k][t], k·c:(k+1)·c]`` with c = C // K.
        Same dtype and array module as ``x``.

    Raises
    ------
    ValueError
        ``orders`` empty or not full permutations of the grid; C not a
        multiple of K; ``x`` not 3-D or 4-D.

    Notes
    -----
    Unlike :func:`multi_scan`, which reads *all* channels K times (K·C values
    to scan), this reads each channel once: K sequences of C/K channels, the
    cost of a single scan.  Every head sees the whole image, each in its own
    order.  The merge :func:`multi_head_merge` is the inverse and the
    transpose (adjoint) of this map: the two only move entries.

    References
    ----------
    Rahman et al. 2024, Mamba in Vision survey, arXiv:2410.03105, Section 3.2
    (multi-head scan).

    Examples
    --------
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)      # channel 0: 0 2 4 6, channel 1: 1 3 5 7
    >>> orders = [scan_order("raster", 2, 2), scan_order("column", 2, 2)]
    >>> multi_head_scan(x, orders)[0, :, :, 0].tolist()
    [[0.0, 2.0, 4.0, 6.0], [1.0, 5.0, 3.0, 7.0]]
    """
    x = _check_tokens(x, "x")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"Parameter x has shape {tuple(x.shape)} but should be (B, H, W, C) or (B, L, C)")
    orders = _check_orders(orders)
    Bsz, C = x.shape[0], x.shape[-1]
    tokens = x.reshape(Bsz, -1, C)  # (B, L, C)
    L = tokens.shape[1]
    perms = [_as_index(q, f"orders[{k}]", n_cells=L, full=True) for k, q in enumerate(orders)]
    heads = _head_slices(C, len(perms))
    seqs = [to_sequence(tokens[..., heads[k]], perms[k], check=False)
            for k in range(len(perms))]  # K × (B, L, c)
    return array_module(x).stack(seqs, axis=1)  # (B, K, L, c)


def multi_head_merge(ys, orders, H, W):
    """Put K heads back: head k's sequence scattered through ``orders[k]`` into channels k·c..(k+1)·c.

    Parameters
    ----------
    ys : ndarray, shape (B, K, H·W, c)
        The per-head outputs, in the order of ``orders``.
    orders : sequence of K array_like of int
        The full scan orders the heads were read in.
    H, W : int

    Returns
    -------
    y : ndarray, shape (B, H, W, K·c)
        ``y[:, orders[k][t], k·c:(k+1)·c] = ys[:, k, t]``; same dtype as ``ys``.

    Raises
    ------
    ValueError
        ``ys`` not (B, K, H·W, c); an order not a permutation of the H·W cells.

    Notes
    -----
    ``multi_head_merge(multi_head_scan(x, orders), orders, H, W) == x`` exactly
    (each head's cells are visited once; no sum, no mean), and
    ``<multi_head_scan(x), ys> == <x, multi_head_merge(ys)>``: the merge is the
    adjoint, so it is also the backward pass of the scan.

    Examples
    --------
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> orders = [scan_order("raster", 2, 2), scan_order("column", 2, 2)]
    >>> bool(np.array_equal(multi_head_merge(multi_head_scan(x, orders), orders, 2, 2), x))
    True
    """
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    orders = _check_orders(orders)
    K = len(orders)
    ys = _check_tokens(ys, "ys")
    if ys.ndim != 4 or ys.shape[1] != K or ys.shape[2] != H * W:
        raise ValueError(
            f"Parameter ys has shape {tuple(ys.shape)} but should be (B, {K}, {H * W}, c) "
            f"(K = {K} heads of H·W = {H}·{W} tokens)")
    perms = [_as_index(q, f"orders[{k}]", n_cells=H * W, full=True) for k, q in enumerate(orders)]
    parts = [from_sequence(ys[:, k], perms[k], H, W, check=False) for k in range(K)]  # (B,H,W,c)
    return array_module(ys).concatenate(parts, axis=-1)  # (B, H, W, K·c)


# ---------------------------------------------------------------------------
# Named schemes
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanScheme:
    """One multi-direction scheme of the literature, as data.

    Attributes
    ----------
    name : str
    build : callable
        ``build(H, W, **options) -> list of K index arrays``.
    reduce : str
        How the K outputs are merged: ``"sum"`` or ``"mean"`` (:func:`multi_merge`),
        or ``"concat"``: each order reads its own group of channels (a head) and
        the heads are put side by side (:func:`multi_head_merge`).
    parameters : str
        ``"separate"`` when each direction has its own SSM parameters,
        ``"shared"`` when one set serves all directions, ``"per layer"`` when
        the model uses one direction per layer, ``"per head"`` when each
        direction has its own channels (and parameters).
    options : dict
        Options of ``build`` with defaults.
    source : str
    notes : str
    """

    name: str
    build: Callable = field(repr=False)
    reduce: str
    parameters: str
    options: dict
    source: str
    notes: str

    def perms(self, H, W, **options):
        """The K index arrays on an H×W grid (see :func:`scan_scheme`)."""
        return scan_scheme(self.name, H, W, **options)


def _named(*names):
    def build(H, W):
        return [scan_order(n, H, W) for n in names]
    return build


def _localmamba(H, W, window=2):
    return [
        scan_order("local", H, W, window=window),
        scan_order("local_column", H, W, window=window),
        scan_order("local", H, W, window=window, reverse=True),
        scan_order("local_column", H, W, window=window, reverse=True),
    ]


def _es2d(H, W, step=2):
    return [g for g in atrous_subgrids(H, W, step) if g.size > 0]


def _zigma(H, W):
    return [scan_order("zigzag", H, W, index=k) for k in range(8)]


def _frame_height(H, frames):
    """The height of one frame when ``frames`` frames are stacked along the rows of an H-row grid."""
    frames = check_positive_int(frames, "frames")
    if H % frames:
        raise ValueError(f"Parameter frames = {frames} does not divide H = {H}: a (T, h, W) video "
                         "is scanned as the (T·h, W) grid of its stacked frames")
    return frames, H // frames


def _vivim(H, W, frames=1):
    T, h = _frame_height(H, frames)
    return [scan_order_3d("spatial_first", T, h, W),
            scan_order_3d("spatial_first_reversed", T, h, W),
            scan_order_3d("temporal_first", T, h, W)]


def _st_bidirectional(H, W, frames=1):
    T, h = _frame_height(H, frames)
    return [scan_order_3d(n, T, h, W) for n in
            ("spatial_first", "spatial_first_reversed", "temporal_first", "temporal_first_reversed")]


def _hierarchical(H, W, levels=3):
    levels = check_positive_int(levels, "levels")
    # coarse to fine: blocks of side 2^(levels-1), ..., 2, 1 (the last is raster)
    return [scan_order("quadtree", H, W, depth=d) for d in range(levels - 1, -1, -1)]


#: The orders of the ``"multihead"`` scheme, one per head (VMamba's four directions).
_MULTIHEAD_ORDERS = CROSS_SCAN_ORDERS


def _multihead(H, W):
    return [scan_order(n, H, W) for n in _MULTIHEAD_ORDERS]


SCHEMES: dict[str, ScanScheme] = {
    "vim_bidirectional": ScanScheme(
        "vim_bidirectional", _named("raster", "raster_reversed"), "mean", "separate", {},
        "Zhu et al. 2024, Vision Mamba (Vim), arXiv:2401.09417 (bimamba v2)",
        "a forward and a backward scan of the flattened patches, each with its own "
        "conv1d, x_proj, dt_proj, A and D; the two outputs are averaged "
        "(Vim's if_devide_out=True)"),
    "vmamba_cross": ScanScheme(
        "vmamba_cross", _named(*CROSS_SCAN_ORDERS), "sum", "separate", {},
        "Liu et al. 2024, VMamba, arXiv:2401.10166 (SS2D)",
        "row, column and both reversed; each direction has its own x_proj, dt_proj, "
        "A and D; outputs summed (cross_merge)"),
    "omnidirectional": ScanScheme(
        "omnidirectional",
        _named(*CROSS_SCAN_ORDERS, "diagonal", "antidiagonal",
               "diagonal_reversed", "antidiagonal_reversed"),
        "sum", "separate", {},
        "Zhao et al. 2024, RS-Mamba, arXiv:2404.02668 (OSS); survey Fig. 5f",
        "the four cross-scan directions plus the wrapping diagonal and anti-diagonal "
        "and their reverses: 8 sequences, outputs summed"),
    "plainmamba": ScanScheme(
        "plainmamba",
        _named("snake", "snake_column", "snake_reversed", "snake_column_reversed"),
        "sum", "shared", {},
        "Yang et al. 2024, PlainMamba, arXiv:2403.17695; survey Fig. 5g",
        "four continuous snakes; one set of SSM parameters for all four, made "
        "direction-aware by adding a learned per-direction vector to B (that lives "
        "in the block, not in the scan order); merged by summation here, the same "
        "merge as VMamba's"),
    "localmamba": ScanScheme(
        "localmamba", _localmamba, "sum", "separate", {"window": 2},
        "Huang et al. 2024, LocalMamba, arXiv:2403.09338; survey Fig. 5d",
        "local windows (row-first and column-first, LocalMamba's local_scan with "
        "column_first False/True) and both reversed.  LocalMamba searches, per "
        "layer, 4 of 8 candidates (h, h_flip, v, v_flip, w2, w2_flip, w7, w7_flip); "
        "this scheme is the all-local set with one window size"),
    "es2d": ScanScheme(
        "es2d", _es2d, "sum", "separate", {"step": 2},
        "Pei et al. 2024, EfficientVMamba, arXiv:2403.09977 (ES2D); survey Fig. 5i",
        "the step² dilated sub-grids, each scanned as its own shorter sequence and "
        "scattered back without overlap (each cell covered exactly once, so the "
        "merge is a plain placement).  On odd sizes the sub-grids differ in length "
        "(use multi_scan(..., stack=False)); EfficientVMamba pads instead"),
    "zigma": ScanScheme(
        "zigma", _zigma, "mean", "per layer", {},
        "Hu et al. 2024, ZigMa, arXiv:2403.13802; survey Fig. 5e",
        "the 8 zigzags (2 per corner).  ZigMa does not merge them inside a block: "
        "layer l uses zigzag l mod 8; merging them all (mean) is offered for comparison"),
    "vivim": ScanScheme(
        "vivim", _vivim, "mean", "separate", {"frames": 1},
        "Yang et al. 2024, Vivim, arXiv:2401.14168 (ST-Mamba, released code's "
        "bimamba_type='v3'); survey Fig. 5b",
        "a (T, h, W) video as the (T·h, W) grid of its stacked frames (option frames = T; "
        "flat index t·h·W + i·W + j): spatial-first forward, spatial-first backward and "
        "temporal-first forward, each with its own conv1d, x_proj, dt_proj, A and D; the "
        "three outputs averaged (the released code divides their sum by 3).  There is no "
        "temporal-first backward scan in the code"),
    "st_bidirectional": ScanScheme(
        "st_bidirectional", _st_bidirectional, "mean", "separate", {"frames": 1},
        "survey Fig. 5b (3D bidirectional scan); Yang et al. 2024, Vivim, arXiv:2401.14168",
        "the fully bidirectional spatiotemporal scan the survey's Fig. 5b names: spatial-first "
        "and temporal-first, each forward and backward (4 sequences over the stacked (T·h, W) "
        "grid, option frames = T), averaged.  Vivim's code runs three of these four"),
    "hierarchical": ScanScheme(
        "hierarchical", _hierarchical, "sum", "separate", {"levels": 3},
        "Zhang et al. 2024, Motion Mamba, arXiv:2403.07487 (hierarchical temporal Mamba); "
        "survey Fig. 5h",
        "one sequence per level of a quadtree pyramid, coarse to fine: level with blocks of "
        "side 2^k reads each aligned block as one contiguous run (scan_order('quadtree', "
        "depth=k)), k = levels-1 .. 0, the last level raster; outputs summed.  Motion Mamba "
        "itself varies the number of isolated SSMs per U-Net level over a 1D motion sequence; "
        "this 2D form is the library's reading of Fig. 5h"),
    "multihead": ScanScheme(
        "multihead", _multihead, "concat", "per head", {},
        "Rahman et al. 2024, Mamba in Vision survey, arXiv:2410.03105, Section 3.2 "
        "(multi-head scan: patches in sub-spaces, one order each)",
        "the channels split into K = 4 heads, head k read in VMamba's direction k (raster, "
        "column, both reversed): K sequences of C/K channels, not K copies of all C; merged "
        "by putting each head's channels back (multi_head_scan / multi_head_merge), so the "
        "cost is that of one scan"),
}


def scan_scheme(name, H, W, **options):
    """The index arrays of a named multi-direction scheme on an H×W grid.

    Parameters
    ----------
    name : str
        A key of :data:`SCHEMES`: ``"vim_bidirectional"`` (2), ``"vmamba_cross"``
        (4), ``"omnidirectional"`` (8), ``"plainmamba"`` (4), ``"localmamba"``
        (4, option ``window``), ``"es2d"`` (step², option ``step``), ``"zigma"`` (8),
        ``"vivim"`` (3) and ``"st_bidirectional"`` (4) on stacked video frames
        (option ``frames``), ``"hierarchical"`` (option ``levels``),
        ``"multihead"`` (4 heads; merge with :func:`multi_head_merge`).
    H, W : int
    **options
        The scheme's options (``SCHEMES[name].options``).

    Returns
    -------
    list of ndarray of int64
        K index arrays; full scan orders except for ``es2d``, whose sub-grids
        partition the grid.  Merge with ``multi_merge(..., reduce=SCHEMES[name].reduce)``
        (``multi_head_merge`` for the ``"concat"`` scheme ``"multihead"``).

    Raises
    ------
    ValueError
        Unknown ``name`` or option, bad sizes, ``window``/``step`` < 1.

    Examples
    --------
    >>> [len(scan_scheme(n, 4, 4)) for n in SCHEMES]
    [2, 4, 8, 4, 4, 4, 8, 3, 4, 3, 4]
    >>> [p.tolist() for p in scan_scheme("es2d", 2, 2)]
    [[0], [2], [1], [3]]
    """
    if not isinstance(name, str):
        raise TypeError(f"Parameter name = {name!r} must be a string naming a scheme")
    check_choice(name, "name", SCHEMES)
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    scheme = SCHEMES[name]
    merged = _check_options(options, scheme.options, f"scheme {name!r}")
    return scheme.build(H, W, **merged)


# =========================================================================== directions of a mixer
def resolve_directions(directions, direction_options):
    """Turn a mixer's directions spec into ``(build(H, W) -> list of index arrays, reduce, label)``.

    ``directions`` is a scheme name of :data:`SCHEMES` (with ``direction_options``)
    or a list of scan-order names or ``(name, options)`` pairs (merged by sum).
    Unknown names and options raise here, at construction, not at run time.
    """
    opts = dict(direction_options or {})
    if isinstance(directions, str):
        if directions not in SCHEMES:
            raise ValueError(f"Parameter directions = {directions!r} is not a scheme of "
                             f"{sorted(SCHEMES)} nor a list of scan-order names")
        if SCHEMES[directions].reduce == "concat":
            raise ValueError(f"Parameter directions = {directions!r} is a multi-head scheme "
                             "(each order reads its own channels); a mixer that scans every "
                             "channel in every direction cannot run it: use MultiHeadSS2D or "
                             "multi_head_scan / multi_head_merge")
        scan_scheme(directions, 4, 4, **opts)  # validates the options now

        def build(H, W):
            return scan_scheme(directions, H, W, **opts)
        return build, SCHEMES[directions].reduce, directions
    if opts:
        raise ValueError("Parameter direction_options is only used with a scheme name; give "
                         "(name, options) pairs in a list of directions instead")
    specs = []
    for i, d in enumerate(directions):
        if isinstance(d, str):
            specs.append((d, {}))
        elif (isinstance(d, tuple) and len(d) == 2 and isinstance(d[0], str)
              and isinstance(d[1], dict)):
            specs.append((d[0], dict(d[1])))
        else:
            raise TypeError(f"Parameter directions[{i}] = {d!r} should be a scan-order name "
                            "or a (name, options) pair")
    if not specs:
        raise ValueError("Parameter directions is empty but should name at least one scan order")
    for name, o in specs:
        scan_order(name, 4, 4, **o)  # unknown names and options fail here, not at run time

    def build(H, W):
        return [scan_order(name, H, W, **o) for name, o in specs]
    return build, "sum", [s[0] if not s[1] else s for s in specs]


def count_directions(build):
    """K of a directions spec, counted on a grid large enough for every scheme option."""
    return len(build(32, 32))
