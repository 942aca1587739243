"""The survey's Table 2 (scan methods) and Table 15 (Mamba vs CNN vs Transformer) as data.

Glossary
--------
H, W     height and width of the token grid (14×14 for a 224-pixel image in 16-pixel patches)
L        number of tokens, L = H·W
perm     a scan order, ``seq[t] = tokens[perm[t]]`` (see ``ssm_ref.vision.scan_orders``)
K        number of directions (sequences) of a multi-direction scheme

Table 2 of the survey (Rahman et al. 2024, arXiv:2410.03105, Section 3.2) lists each
scan method with its characteristics, strengths, weaknesses and use cases.  Here that
prose is data keyed by registry name, next to the registries it describes:
:data:`ORDER_NOTES` for every order of :data:`~ssm_ref.vision.SCAN_ORDERS`,
:data:`SCHEME_NOTES` for every scheme of :data:`~ssm_ref.vision.SCHEMES`.  The tests
demand an entry for every registered name, so a new scan cannot be added without its
row.  :func:`scan_table` adds the columns that are measured, not written: directions,
tokens processed per image and per layer, and how far apart 2D neighbours end up
(:func:`scheme_locality`).

Table 15 of the survey compares Mamba, CNN and Transformer models; the ImageNet-1K
numbers it rests on are in :data:`PUBLISHED_IMAGENET`, each with the bibliography key
of the source it was read from and where in that source (``book/references.bib``
holds the keys).  A value that could not be read from a primary source is ``None``.

Book page: "A map of the survey" (label ``survey-map``).
"""
from __future__ import annotations

import numpy as np

from .._validation import check_positive_int
from .multi import SCHEMES, scan_scheme
from .scan_orders import SCAN_ORDERS, scan_order

__all__ = ["ORDER_NOTES", "SCHEME_NOTES", "PUBLISHED_IMAGENET", "scheme_locality",
           "scan_table"]

_NOTE_KEYS = ("figure", "characteristics", "strengths", "weaknesses", "use_cases")


def _note(figure, characteristics, strengths, weaknesses, use_cases):
    return dict(zip(_NOTE_KEYS, (figure, characteristics, strengths, weaknesses, use_cases)))


#: Table 2's prose columns for every scan order of SCAN_ORDERS (one direction each).
ORDER_NOTES: dict[str, dict] = {
    "raster": _note(
        "4A (sequential)", "row after row, left to right",
        "the plain flattening of ViT and Vim; horizontal neighbours stay adjacent",
        "vertical neighbours end up W tokens apart; a jump back at every row end",
        "Vim's forward direction; the baseline every other order is compared with"),
    "column": _note(
        "4A (sequential, vertical)", "column after column, top to bottom",
        "vertical neighbours adjacent: the complement of raster",
        "horizontal neighbours H tokens apart; a jump at every column end",
        "VMamba's second direction"),
    "raster_reversed": _note(
        "4A, read backwards", "raster from the bottom-right corner",
        "gives the first rows the context of the last: with raster, every token sees all",
        "alone it has raster's locality and the opposite causal blind spot",
        "Vim's backward direction; VMamba's third"),
    "column_reversed": _note(
        "4A, read backwards", "column-major from the bottom-right corner",
        "with column, every token sees the whole image vertically",
        "alone it has column's locality",
        "VMamba's fourth direction"),
    "snake": _note(
        "4C (zigzag)", "rows, alternating left-to-right and right-to-left",
        "continuous: every step goes to a 4-neighbour, no jumps",
        "vertical neighbours are still up to 2W-1 tokens apart",
        "PlainMamba's continuous 2D scan; the survey's zigzag"),
    "snake_column": _note(
        "4C (zigzag, vertical)", "columns, alternating down and up",
        "continuous; vertical neighbours adjacent",
        "horizontal neighbours up to 2H-1 tokens apart",
        "PlainMamba (second of four)"),
    "snake_reversed": _note(
        "4C, read backwards", "the row snake from its far end",
        "continuous; the other causal direction of the snake",
        "the snake's locality",
        "PlainMamba (third of four)"),
    "snake_column_reversed": _note(
        "4C, read backwards", "the column snake from its far end",
        "continuous; the other causal direction of the column snake",
        "the column snake's locality",
        "PlainMamba (fourth of four)"),
    "zigzag": _note(
        "5e (ZigMa)", "a row or column snake from one of the 4 corners (index 0..7)",
        "continuous; 8 variants to alternate between layers at the cost of one",
        "any single one is a snake with a snake's vertical or horizontal gaps",
        "ZigMa's diffusion backbone: layer l uses zigzag l mod 8"),
    "diagonal": _note(
        "5f (omnidirectional)", "wrapping diagonals, column offset growing with the row",
        "diagonal neighbours adjacent: an orientation rows and columns miss",
        "4-neighbours about H tokens apart, and almost L apart across the wrap",
        "RS-Mamba's omnidirectional scan of remote-sensing images (roads, rivers)"),
    "antidiagonal": _note(
        "5f (omnidirectional)", "wrapping anti-diagonals",
        "the other diagonal orientation",
        "4-neighbours about H tokens apart, and almost L apart across the wrap",
        "RS-Mamba (with diagonal and the four cross-scan orders)"),
    "diagonal_reversed": _note(
        "5f, read backwards", "the diagonal order from its far end",
        "the other causal direction along diagonals",
        "the diagonal order's locality",
        "RS-Mamba"),
    "antidiagonal_reversed": _note(
        "5f, read backwards", "the anti-diagonal order from its far end",
        "the other causal direction along anti-diagonals",
        "the anti-diagonal order's locality",
        "RS-Mamba"),
    "spiral": _note(
        "4 (spiral, edge-in)", "clockwise rings from the border inward",
        "continuous; the centre comes last, after the whole border",
        "neighbours on adjacent rings are a full ring apart",
        "centred content (the survey names medical and remote-sensing images)"),
    "spiral_reversed": _note(
        "4 (spiral, centre-out)", "the spiral from the centre outward",
        "continuous; the centre's context comes first",
        "the spiral's ring-to-ring gaps",
        "centred objects, foveated processing"),
    "radial": _note(
        "4 (radial)", "cells by distance from the centre, ties by angle",
        "concentric rings: treats the grid almost rotation-symmetrically",
        "jumps inside every ring; not continuous",
        "centred or polar data (the survey: medical imaging, remote sensing)"),
    "hilbert": _note(
        "4 (Hilbert curve)", "a space-filling curve; generalized to any H×W",
        "continuous; most neighbours in both axes stay close, though a few end up far apart",
        "irregular turns; on sizes other than 2^k a few diagonal steps",
        "locality-sensitive scans, serialised point clouds"),
    "zorder": _note(
        "— (not in the survey's figures)", "Morton codes: bit-interleaved row and column",
        "cheap to compute; keeps quadrants together at every scale",
        "jumps between quadrants; not continuous",
        "serialised point-cloud and octree Mambas"),
    "local": _note(
        "5d (local / window)", "window×window tiles row-major, row-major inside each",
        "neighbours inside a window stay close",
        "window borders split neighbours; global context only through other directions",
        "LocalMamba; dense prediction that needs local detail"),
    "local_column": _note(
        "5d (local, column-first)", "tiles column-major, column-major inside each",
        "the vertical complement of local",
        "the same window-border splits",
        "LocalMamba's column-first candidates"),
    "atrous": _note(
        "5i (atrous / dilated)", "the step² dilated sub-grids one after the other",
        "each sub-grid is a coarse view of the whole image",
        "4-neighbours always lie in different sub-grids, far apart in the sequence",
        "EfficientVMamba's ES2D (as separate sub-grid sequences, see the es2d scheme)"),    "quadtree": _note(
        "5h (hierarchical; this 2D reading is the book's)",
        "aligned blocks of side 2^depth row-major, each read as its four half-side blocks",
        "every aligned block at every scale is one contiguous run; depth 0 is raster",
        "jumps between blocks; horizontal neighbours across a block border end up far apart",
        "the levels of the hierarchical scheme; multi-scale features"),
}

#: Table 2's prose columns for every multi-direction scheme of SCHEMES.
SCHEME_NOTES: dict[str, dict] = {
    "vim_bidirectional": _note(
        "5a (bidirectional)", "raster forward and backward, separate parameters, averaged",
        "every token sees the whole sequence; simple",
        "only the horizontal flattening: vertical neighbours stay W apart in both",
        "Vim (classification, detection, segmentation backbones); VL-Mamba, Motion Mamba"),
    "vmamba_cross": _note(
        "5c (cross-scan, SS2D)", "raster, column and both reversed; outputs summed",
        "both axes adjacent in some direction; every token sees the whole image",
        "four scans: four times the tokens of one direction",
        "VMamba and its descendants; VMRNN, VL-Mamba"),
    "omnidirectional": _note(
        "5f (omnidirectional)", "the four cross-scan orders plus the diagonals, reversed",
        "eight orientations, diagonals included",
        "eight scans: eight times the tokens of one direction",
        "RS-Mamba, VmambaIR (remote sensing, restoration)"),
    "plainmamba": _note(
        "5g (continuous 2D)", "four snakes with shared parameters, direction-aware B",
        "continuous in every direction; one parameter set for all four",
        "four scans per layer; one parameter set must serve all four directions",
        "PlainMamba (non-hierarchical backbone)"),
    "localmamba": _note(
        "5d (local)", "local windows row- and column-first, each reversed",
        "local detail kept; global through the window order",
        "four scans; window borders; LocalMamba also searches the set per layer",
        "LocalMamba (LocalVim, LocalVMamba)"),
    "es2d": _note(
        "5i (ES2D, atrous)", "the four stride-2 sub-grids, each its own short sequence",
        "the whole image in L tokens, not 4L: the cheapest multi-direction scheme",
        "no 4-neighbours ever share a sequence; local mixing is left to the convolution",
        "EfficientVMamba (light-weight models)"),
    "zigma": _note(
        "5e (zigzag)", "8 corner snakes, one per layer (merged here only to compare)",
        "continuous; direction diversity across layers at the cost of one scan",
        "one direction per layer: each layer sees one causal order",
        "ZigMa (diffusion, image and video generation)"),    "vivim": _note(
        "5b (3D bidirectional, as Vivim's code runs it)",
        "frames stacked: spatial-first forward and backward, temporal-first forward; averaged",
        "spatial and temporal neighbours both adjacent in some sequence; three scans, not four",
        "no temporal-first backward scan: the last frame never reaches the first along time",
        "Vivim (medical video segmentation); video backbones"),
    "st_bidirectional": _note(
        "5b (3D bidirectional, as the survey draws it)",
        "spatial-first and temporal-first, each forward and backward; averaged",
        "every token sees the whole clip in both orders",
        "four scans of F·H·W tokens",
        "video understanding and segmentation (VideoMamba, Vivim)"),
    "hierarchical": _note(
        "5h (hierarchical)", "one quadtree level per sequence, coarse to fine; outputs summed",
        "each level keeps blocks of its own scale together",
        "one scan per level; the mean neighbour distance is the same at every level",
        "Motion Mamba (motion generation, in 1D); multi-scale backbones"),
    "multihead": _note(
        "§3.2 multi-head scan (no figure)",
        "channels in K heads, head k read in its own order; heads concatenated back",
        "K orientations for the cost of one scan",
        "each channel sees one order only; the survey cites no model for it",
        "light-weight multi-direction blocks (MultiHeadSS2D here)"),
}


# ---------------------------------------------------------------------------
# Locality of a set of sequences
# ---------------------------------------------------------------------------

def scheme_locality(perms, H, W, *, near=4):
    """How close 2D neighbours stay in a set of sequences (a scheme, or one order).

    Parameters
    ----------
    perms : list of array_like of int
        K sequences of cell indices ``p = i·W + j``; each a full scan order or a
        part of the grid (ES2D's sub-grids).  Every cell must be visited at least once.
    H, W : int
        Grid size.
    near : int, optional
        Threshold for ``near_fraction`` (default 4).

    Returns
    -------
    dict
        ``directions`` K; ``tokens`` the total length (tokens scanned per image);
        ``longest`` the longest sequence; ``mean_jump`` and ``max_jump``: the
        Manhattan distance on the grid between consecutive tokens of a sequence,
        over all sequences; ``neighbour_step_fraction``: the share of those steps that
        go to a 4-neighbour; for every pair of 4-adjacent cells the *best* distance
        ``min_k |t_k(p) - t_k(q)|`` over the sequences k that hold both:
        ``mean_best_distance``, ``max_best_distance``, ``near_fraction`` (share of
        pairs with best distance <= ``near``) and ``never_together`` (share of pairs no
        sequence holds both of; those pairs count as not near and are left out of
        the mean and max, which are NaN when no pair is together).

    Raises
    ------
    ValueError
        Bad sizes, an index outside the grid, a cell visited twice in one sequence,
        or a cell no sequence visits.

    Notes
    -----
    For one full order the best distance is the distance in that order, so
    ``mean_best_distance`` and ``max_best_distance`` equal ``locality_stats``'s
    ``mean_neighbour_seq_distance`` and ``max_neighbour_seq_distance`` (tested).

    Examples
    --------
    >>> s = scheme_locality(scan_scheme("vmamba_cross", 2, 2), 2, 2)
    >>> s["directions"], s["tokens"], s["mean_best_distance"]
    (4, 16, 1.0)
    >>> scheme_locality(scan_scheme("es2d", 2, 2), 2, 2)["never_together"]
    1.0
    """
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    near = check_positive_int(near, "near")
    if isinstance(perms, np.ndarray) and perms.ndim == 1:
        perms = [perms]
    if len(perms) == 0:
        raise ValueError("Parameter perms is empty but should hold at least one sequence")
    L = H * W
    positions = []  # per sequence: (L,) position of each cell, -1 where absent
    visited = np.zeros(L, dtype=bool)
    jumps, n_neighbour = [], 0
    for k, perm in enumerate(perms):
        perm = np.asarray(perm)
        if perm.ndim != 1 or perm.dtype.kind not in "iu":
            raise ValueError(f"Parameter perms[{k}] has shape {perm.shape} and dtype "
                             f"{perm.dtype} but should be a 1-D integer array")
        if perm.size and (perm.min() < 0 or perm.max() >= L):
            raise ValueError(f"Parameter perms[{k}] holds indices outside 0..{L - 1} "
                             f"of the {H}×{W} grid")
        if np.unique(perm).size != perm.size:
            raise ValueError(f"Parameter perms[{k}] visits a cell twice")
        pos = np.full(L, -1, dtype=np.int64)
        pos[perm] = np.arange(perm.size)
        positions.append(pos)
        visited[perm] = True
        for t in range(perm.size - 1):
            i0, j0 = divmod(int(perm[t]), W)
            i1, j1 = divmod(int(perm[t + 1]), W)
            d = abs(i1 - i0) + abs(j1 - j0)
            jumps.append(d)
            n_neighbour += d == 1
    if not visited.all():
        raise ValueError(f"Parameter perms leaves {int((~visited).sum())} cells of the "
                         f"{H}×{W} grid unvisited but should cover every cell")
    best, n_apart = [], 0
    for i in range(H):
        for j in range(W):
            p = i * W + j
            for q in ([p + 1] if j + 1 < W else []) + ([p + W] if i + 1 < H else []):
                gaps = [abs(int(pos[p]) - int(pos[q])) for pos in positions
                        if pos[p] >= 0 and pos[q] >= 0]
                if gaps:
                    best.append(min(gaps))
                else:
                    n_apart += 1
    n_pairs = len(best) + n_apart
    nan = float("nan")
    return {
        "directions": len(perms),
        "tokens": int(sum(np.asarray(p).size for p in perms)),
        "longest": int(max(np.asarray(p).size for p in perms)),
        "mean_jump": float(np.mean(jumps)) if jumps else nan,
        "max_jump": float(np.max(jumps)) if jumps else nan,
        "neighbour_step_fraction": n_neighbour / len(jumps) if jumps else nan,
        "mean_best_distance": float(np.mean(best)) if best else nan,
        "max_best_distance": float(np.max(best)) if best else nan,
        "near_fraction": float(np.sum(np.array(best) <= near)) / n_pairs if n_pairs else nan,
        "never_together": n_apart / n_pairs if n_pairs else nan,
        "near": near,
    }


def scan_table(H=14, W=14, *, near=4):
    """Table 2 built from the registries: one row per scan order and per scheme.

    Parameters
    ----------
    H, W : int, optional
        Grid size for the measured columns (default 14×14: a 224-pixel image in
        16-pixel patches, Vim's and DeiT's token grid).
    near : int, optional
        Threshold of ``near_fraction`` (default 4).

    Returns
    -------
    list of dict
        Orders first (registry order), then schemes.  Each row: ``name``, ``kind``
        (``"order"`` or ``"scheme"``), the prose columns of :data:`ORDER_NOTES` /
        :data:`SCHEME_NOTES`, ``parameters`` (schemes: separate / shared / per layer;
        ``"—"`` for an order), ``tokens_per_layer`` (``tokens``, or ``L`` when the
        scheme uses one direction per layer or reads each channel in one order only,
        as the multi-head scan does) and the measured columns of
        :func:`scheme_locality`.  Registry options are at their defaults.

    Raises
    ------
    KeyError
        A registered order or scheme has no prose entry.

    Examples
    --------
    >>> rows = {r["name"]: r for r in scan_table(4, 4)}
    >>> rows["raster"]["tokens"], rows["vmamba_cross"]["tokens"], rows["es2d"]["tokens"]
    (16, 64, 16)
    >>> rows["zigma"]["tokens"], rows["zigma"]["tokens_per_layer"]
    (128, 16)
    """
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    rows = []
    for name in SCAN_ORDERS:
        if name not in ORDER_NOTES:
            raise KeyError(f"scan order {name!r} has no row in ORDER_NOTES")
        stats = scheme_locality([scan_order(name, H, W)], H, W, near=near)
        rows.append({"name": name, "kind": "order", **ORDER_NOTES[name], "parameters": "—",
                     "tokens_per_layer": stats["tokens"], **stats})
    for name, scheme in SCHEMES.items():
        if name not in SCHEME_NOTES:
            raise KeyError(f"scheme {name!r} has no row in SCHEME_NOTES")
        # video schemes: the grid as 2 stacked frames of (H/2)×W when H is even
        options = {"frames": 2} if "frames" in scheme.options and H % 2 == 0 else {}
        stats = scheme_locality(scan_scheme(name, H, W, **options), H, W, near=near)
        # one direction per layer (ZigMa), or each channel read once (multi-head heads):
        # the work of a single scan of H·W tokens
        one_scan = scheme.parameters in ("per layer", "per head")
        per_layer = H * W if one_scan else stats["tokens"]
        rows.append({"name": name, "kind": "scheme", **SCHEME_NOTES[name],
                     "parameters": scheme.parameters, "tokens_per_layer": per_layer,
                     **stats})
    return rows


# ---------------------------------------------------------------------------
# Table 15: published ImageNet-1K numbers, each with its source
# ---------------------------------------------------------------------------

def _row(model, family, top1, params_m, gflops, source, where, note="", other_sources=None):
    return {"model": model, "family": family, "top1": top1, "params_m": params_m,
            "gflops": gflops, "source": source, "where": where, "note": note,
            "other_sources": dict(other_sources or {})}


#: ImageNet-1K, 224×224, trained on ImageNet-1K only.  ``top1`` in %, ``params_m`` in
#: millions, ``gflops`` in GFLOPs as each source counts them (multiply-adds); ``None``
#: where the source gives no value and no primary source was found.  ``source`` is the
#: bibliography key of the source of the row; ``other_sources`` maps a field to
#: ``(key, where)`` when that field comes from elsewhere.
PUBLISHED_IMAGENET: list[dict] = [
    _row("Vim-Ti", "Mamba", 76.1, 7, 1.5, "zhu2024vim",
         "hustvl/Vim README, Model Weights (mid class token; the first preprint: 73.1)",
         "FLOPs not in Vim's README; 1.5G is LocalMamba's count",
         other_sources={"gflops": ("huang2024localmamba",
                                   "hunto/LocalMamba README, ImageNet table")}),
    _row("Vim-S", "Mamba", 80.5, 26, 5.1, "zhu2024vim",
         "hustvl/Vim README, Model Weights (mid class token; the first preprint: 80.3)",
         "FLOPs not in Vim's README; 5.1G is LocalMamba's count",
         other_sources={"gflops": ("huang2024localmamba",
                                   "hunto/LocalMamba README, ImageNet table")}),
    _row("VMamba-T (v0)", "Mamba", 82.2, 22, 5.6, "liu2024vmamba",
         "MzeroMiko/VMamba README of Feb. 2024 (release #20240218)",
         "first published as 4.5G; recounted as 5.6G by the authors (1 Feb. 2024, new scan FLOP count)"),
    _row("VMamba-S (v0)", "Mamba", 83.5, 44, 11.2, "liu2024vmamba",
         "MzeroMiko/VMamba README of Feb. 2024", "first published as 9.1G, recounted 11.2G"),
    _row("VMamba-B (v0)", "Mamba", 83.2, 75, 18.0, "liu2024vmamba",
         "MzeroMiko/VMamba README of Feb. 2024",
         "first published as 15.2G, recounted 18.0G; 83.7 with drop path 0.6 and EMA"),
    _row("VMamba-T", "Mamba", 82.6, 30, 4.9, "liu2024vmamba",
         "MzeroMiko/VMamba README, release #v2cls (final version)"),
    _row("VMamba-S", "Mamba", 83.6, 50, 8.7, "liu2024vmamba",
         "MzeroMiko/VMamba README, release #v2cls (final version)"),
    _row("VMamba-B", "Mamba", 83.9, 89, 15.4, "liu2024vmamba",
         "MzeroMiko/VMamba README, release #v2cls (final version)"),
    _row("LocalVim-T", "Mamba", 76.2, 8, 1.5, "huang2024localmamba",
         "hunto/LocalMamba README, ImageNet table"),
    _row("LocalVMamba-T", "Mamba", 82.7, 26, 5.7, "huang2024localmamba",
         "hunto/LocalMamba README, ImageNet table"),
    _row("EfficientVMamba-T", "Mamba", 76.5, 6, 0.8, "pei2024efficientvmamba",
         "TerryPei/EfficientVMamba README, Classification on ImageNet-1K"),
    _row("EfficientVMamba-S", "Mamba", 78.7, 11, 1.3, "pei2024efficientvmamba",
         "TerryPei/EfficientVMamba README, Classification on ImageNet-1K"),
    _row("EfficientVMamba-B", "Mamba", 81.8, 33, 4.0, "pei2024efficientvmamba",
         "TerryPei/EfficientVMamba README, Classification on ImageNet-1K"),
    _row("PlainMamba-L1", "Mamba", 77.9, 7.3, None, "yang2024plainmamba",
         "ChenhongyiYang/PlainMamba README, ImageNet-1k Classification",
         "the README gives no FLOPs; the paper's count was not verified here"),
    _row("PlainMamba-L2", "Mamba", 81.6, 25.7, None, "yang2024plainmamba",
         "ChenhongyiYang/PlainMamba README, ImageNet-1k Classification",
         "the README gives no FLOPs; the paper's count was not verified here"),
    _row("PlainMamba-L3", "Mamba", 82.3, 50.5, None, "yang2024plainmamba",
         "ChenhongyiYang/PlainMamba README, ImageNet-1k Classification",
         "the README gives no FLOPs; the paper's count was not verified here"),
    _row("DeiT-Ti", "Transformer", 72.2, 5, None, "touvron2021deit",
         "facebookresearch/deit README, Model Zoo",
         "the README gives no FLOPs; a primary count was not verified here"),
    _row("DeiT-S", "Transformer", 79.9, 22, 4.6, "touvron2021deit",
         "facebookresearch/deit README, Model Zoo (VMamba's README quotes 79.8)",
         "FLOPs as VMamba's README quotes them",
         other_sources={"gflops": ("liu2024vmamba",
                                   "MzeroMiko/VMamba README, classification table")}),
    _row("Swin-T", "Transformer", 81.2, 28, 4.5, "liu2021swin",
         "microsoft/Swin-Transformer README, ImageNet-1K models"),
    _row("Swin-S", "Transformer", 83.2, 50, 8.7, "liu2021swin",
         "microsoft/Swin-Transformer README, ImageNet-1K models"),
    _row("ResNet-50", "CNN", 76.13, 25.6, 4.09, "torchvision2016",
         "torchvision ResNet50_Weights.IMAGENET1K_V1 (ResNet v1.5, 90-epoch recipe)",
         "the ResNet paper reports 10-crop errors and no single-crop 224 top-1; "
         "the torchvision weights are the usual stand-in",
         other_sources={"model": ("he2016resnet", "the architecture")}),
    _row("ConvNeXt-T", "CNN", 82.1, 28, 4.5, "liu2022convnext",
         "facebookresearch/ConvNeXt README, ImageNet-1K trained models"),
]
