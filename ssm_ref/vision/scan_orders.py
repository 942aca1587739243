"""Scan orders: the ways the vision-Mamba literature turns a 2D grid of tokens into a 1D sequence.

Glossary
--------
B        batch size
H, W     height and width of the token grid (patches, not pixels)
C        channels of a token
L        sequence length, L = H·W
p        row-major flat index of the cell (i, j): p = i·W + j
perm     a scan order: an int64 array of length L holding each p exactly once
t        position in the sequence: ``seq[t] = tokens[perm[t]]``
T        number of frames of a video (T, H, W)

A scan order is a permutation ``perm`` of the row-major token indices.  Scanning
gathers, merging scatters back::

    seq[t] = tokens[perm[t]]            (to_sequence,   eq-scan-gather)
    out[perm[t]] += y[t]                (from_sequence, eq-scan-scatter)

The merge *adds* so that the outputs of several directions of a multi-direction
scheme (``ssm_ref.vision.multi``) sum up in one image.

Every order here works on any H×W (odd, non-square, 1×n, n×1, 1×1), is a
bijection (tested), and says in its registry entry which paper or code it comes
from.  ``SCAN_ORDERS`` is the registry; ``scan_order(name, H, W, **options)``
builds one.  Every order also accepts ``reverse=True`` (the sequence read
backwards); the common reversals have their own names (``raster_reversed``...).

The book chapter is "Images as sequences" (label ``images-as-sequences``); the
survey it follows is Rahman et al. 2024, "Mamba in Vision", arXiv:2410.03105,
Section 3.2 and Figures 4 and 5.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .._validation import check_choice, check_positive_int
from .._xp import array_module, on_module_cached, to_host

__all__ = [
    "ScanOrder",
    "SCAN_ORDERS",
    "SCAN_ORDERS_3D",
    "scan_order",
    "scan_order_3d",
    "atrous_subgrids",
    "inverse",
    "to_sequence",
    "from_sequence",
    "locality_stats",
]


# ---------------------------------------------------------------------------
# The builders.  Each takes (H, W, **options) and returns an int64 array (H·W,).
# They trust their input; `scan_order` validates.  Explicit loops on purpose:
# each one reads like the description of its path.
# ---------------------------------------------------------------------------

def _raster(H, W):
    """Row-major: left to right, top to bottom (ViT, Vim)."""
    return np.arange(H * W, dtype=np.int64)  # (L,)


def _column(H, W):
    """Column-major: top to bottom, left to right (VMamba's transpose-then-flatten)."""
    perm = []
    for j in range(W):
        for i in range(H):
            perm.append(i * W + j)
    return np.array(perm, dtype=np.int64)


def _boustrophedon(lines, first, index):
    """Boustrophedon: walk ``first`` along the first line, reversed along the next, and so on.

    ``index(line, position)`` is the flat index ``i * W + j`` of a cell.
    """
    perm = []
    for k, line in enumerate(lines):
        for pos in (first if k % 2 == 0 else first[::-1]):
            perm.append(index(line, pos))
    return np.array(perm, dtype=np.int64)


def _row_snake_from(H, W, from_bottom, from_right):
    """Boustrophedon over rows starting at a corner; the row direction flips every row."""
    rows = list(range(H))[::-1] if from_bottom else list(range(H))
    first_cols = list(range(W))[::-1] if from_right else list(range(W))
    return _boustrophedon(rows, first_cols, lambda i, j: i * W + j)


def _column_snake_from(H, W, from_bottom, from_right):
    """Boustrophedon over columns starting at a corner; the column direction flips every column."""
    cols = list(range(W))[::-1] if from_right else list(range(W))
    first_rows = list(range(H))[::-1] if from_bottom else list(range(H))
    return _boustrophedon(cols, first_rows, lambda j, i: i * W + j)


def _snake(H, W):
    """PlainMamba's continuous 2D scan over rows, from the top-left corner."""
    return _row_snake_from(H, W, from_bottom=False, from_right=False)


def _snake_column(H, W):
    """PlainMamba's continuous 2D scan over columns, from the top-left corner."""
    return _column_snake_from(H, W, from_bottom=False, from_right=False)


# ZigMa's corners in its order: (0, 0), (0, W-1), (H-1, 0), (H-1, W-1),
# written as (from_bottom, from_right).
_ZIGMA_CORNERS = ((False, False), (False, True), (True, False), (True, True))


def _zigzag(H, W, index=0):
    """ZigMa's zigzag number ``index`` (0..7): corner ``index // 2``, a row snake if ``index``
    is even, else a column snake."""
    from_bottom, from_right = _ZIGMA_CORNERS[index // 2]
    if index % 2 == 0:
        return _row_snake_from(H, W, from_bottom, from_right)
    return _column_snake_from(H, W, from_bottom, from_right)


def _diagonal(H, W):
    """RS-Mamba's diagonal: seq[w·H + h] = x[h, (h + w) mod W] (wrapping diagonals)."""
    perm = np.empty(H * W, dtype=np.int64)
    for w in range(W):
        for h in range(H):
            perm[w * H + h] = h * W + (h + w) % W
    return perm


def _antidiagonal(H, W):
    """RS-Mamba's anti-diagonal: seq[w·H + h] = x[h, (w - h) mod W]."""
    perm = np.empty(H * W, dtype=np.int64)
    for w in range(W):
        for h in range(H):
            perm[w * H + h] = h * W + (w - h) % W
    return perm


def _spiral(H, W):
    """Clockwise spiral from the top-left corner inward, peeling one ring at a time."""
    top, bottom, left, right = 0, H - 1, 0, W - 1
    perm = []
    while top <= bottom and left <= right:
        for j in range(left, right + 1):               # top edge, left -> right
            perm.append(top * W + j)
        for i in range(top + 1, bottom + 1):           # right edge, down
            perm.append(i * W + right)
        if top < bottom:
            for j in range(right - 1, left - 1, -1):   # bottom edge, right -> left
                perm.append(bottom * W + j)
        if left < right:
            for i in range(bottom - 1, top, -1):       # left edge, up
                perm.append(i * W + left)
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return np.array(perm, dtype=np.int64)


def _spiral_reversed(H, W):
    """The spiral read backwards: from the centre out to the top-left corner."""
    return _spiral(H, W)[::-1].copy()


def _radial(H, W):
    """By distance from the grid centre, ties broken by angle (clockwise from east).

    Distances are compared exactly as the integer (2i - (H-1))² + (2j - (W-1))²
    (four times the squared distance); two cells at the same distance never have
    the same angle, so the order is total.
    """
    d2 = np.empty(H * W, dtype=np.int64)
    angle = np.empty(H * W, dtype=np.float64)
    for i in range(H):
        for j in range(W):
            di, dj = 2 * i - (H - 1), 2 * j - (W - 1)   # doubled offsets from the centre
            d2[i * W + j] = di * di + dj * dj
            # rows grow downwards, so atan2(di, dj) turns clockwise on screen
            angle[i * W + j] = math.atan2(di, dj) % (2 * math.pi)
    return np.lexsort((angle, d2)).astype(np.int64)     # primary key last


def _hilbert(H, W):
    """Generalized Hilbert curve on any H×W ("gilbert", Červený 2019), written from its description.

    The curve fills a rectangle spanned from a corner ``(x, y)`` by a major
    vector ``a`` (the long side, along which the curve travels from start to
    end) and a minor vector ``b``.  A strip one cell thick is filled straight.
    Otherwise the rectangle is cut:

    * if it is much longer than wide (2|a| > 3|b|), into two halves along ``a``,
      each filled in the same direction;
    * else into three parts as in the classic Hilbert curve: go "up" the first
      half of ``b`` (a sub-rectangle with the roles of a and b swapped), run along
      the whole of ``a`` over the remaining height, and come back "down" the last
      part with both vectors reversed.

    Halves are rounded so the sub-rectangles have even sides where possible;
    that keeps every step between 4-neighbours except, where the parity of the
    sides makes it unavoidable (long side odd, short side even), one diagonal
    step.  On 2^k × 2^k squares it reproduces the classic Hilbert curve.
    Here x is the column j and y the row i.
    """
    path = []

    def sign(v):
        return (v > 0) - (v < 0)

    def fill(x, y, ax, ay, bx, by):
        length = abs(ax + ay)            # cells along the major vector a
        thick = abs(bx + by)             # cells along the minor vector b
        dax, day = sign(ax), sign(ay)    # unit step along a
        dbx, dby = sign(bx), sign(by)    # unit step along b
        if thick == 1:                   # a single row along a
            for _ in range(length):
                path.append((x, y))
                x, y = x + dax, y + day
            return
        if length == 1:                  # a single column along b
            for _ in range(thick):
                path.append((x, y))
                x, y = x + dbx, y + dby
            return
        hax, hay = ax // 2, ay // 2      # half of a
        hbx, hby = bx // 2, by // 2      # half of b
        if 2 * length > 3 * thick:
            # long rectangle: two halves along a; make the first half even
            if abs(hax + hay) % 2 == 1 and length > 2:
                hax, hay = hax + dax, hay + day
            fill(x, y, hax, hay, bx, by)
            fill(x + hax, y + hay, ax - hax, ay - hay, bx, by)
        else:
            # Hilbert split: up b (roles swapped), along a, back down
            if abs(hbx + hby) % 2 == 1 and thick > 2:
                hbx, hby = hbx + dbx, hby + dby
            fill(x, y, hbx, hby, hax, hay)
            fill(x + hbx, y + hby, ax, ay, bx - hbx, by - hby)
            fill(x + (ax - dax) + (hbx - dbx), y + (ay - day) + (hby - dby),
                 -hbx, -hby, -(ax - hax), -(ay - hay))

    if W >= H:
        fill(0, 0, W, 0, 0, H)           # travel along the width
    else:
        fill(0, 0, 0, H, W, 0)           # travel along the height
    return np.array([y * W + x for (x, y) in path], dtype=np.int64)


def _zorder(H, W):
    """Morton (Z-order): sort the cells by their interleaved bits (row bit above column bit)."""
    nbits = max(H - 1, W - 1, 1).bit_length()
    codes = np.empty(H * W, dtype=np.int64)
    for i in range(H):
        for j in range(W):
            code = 0
            for b in range(nbits):
                code |= ((j >> b) & 1) << (2 * b)        # column bits at even places
                code |= ((i >> b) & 1) << (2 * b + 1)    # row bits at odd places
            codes[i * W + j] = code
    return np.argsort(codes, kind="stable").astype(np.int64)


def _local(H, W, window=2, column_first=False):
    """LocalMamba's windowed scan with partial windows at the right/bottom edges."""
    w = window
    n_win_rows, n_win_cols = -(-H // w), -(-W // w)      # ceil(H / w), ceil(W / w)
    perm = []
    if not column_first:
        # windows row-major, row-major inside each window
        for gi in range(n_win_rows):
            for gj in range(n_win_cols):
                for i in range(gi * w, min((gi + 1) * w, H)):
                    for j in range(gj * w, min((gj + 1) * w, W)):
                        perm.append(i * W + j)
    else:
        # windows column-major, column-major inside each window
        for gj in range(n_win_cols):
            for gi in range(n_win_rows):
                for j in range(gj * w, min((gj + 1) * w, W)):
                    for i in range(gi * w, min((gi + 1) * w, H)):
                        perm.append(i * W + j)
    return np.array(perm, dtype=np.int64)


def _local_column(H, W, window=2):
    """LocalMamba's column-first windowed scan (``local_scan(..., column_first=True)``)."""
    return _local(H, W, window=window, column_first=True)


def _quadtree(H, W, depth=2):
    """Blocks of side 2^depth row-major; inside each, its four half-side blocks row-major,
    recursively.

    The read order of one level of a quadtree pyramid (the hierarchical scan):
    every aligned block of side 2^k, k <= depth, is one contiguous run of the
    sequence.  depth 0 is raster, depth 1 LocalMamba's 2×2 windows, and on a
    2^k × 2^k grid depth k is the Z-order.  Blocks past the right/bottom edge
    are clipped (partial blocks, as in ``local``).
    """
    depth = check_positive_int(depth, "depth", minimum=0)
    perm = []

    def visit(i0, j0, side):
        if side == 1:
            perm.append(i0 * W + j0)
            return
        half = side // 2
        for di in (0, half):          # the four quadrants, row-major
            for dj in (0, half):
                if i0 + di < H and j0 + dj < W:
                    visit(i0 + di, j0 + dj, half)

    side = 2 ** depth
    for bi in range(0, H, side):      # the blocks of the top level, row-major
        for bj in range(0, W, side):
            visit(bi, bj, side)
    return np.array(perm, dtype=np.int64)


def _atrous_subgrids(H, W, step):
    """The step² dilated sub-grids of ES2D, each an int64 array; empty ones are kept."""
    subgrids = []
    for b in range(step):          # column offset (outer)
        for a in range(step):      # row offset (inner)
            k = b * step + a       # sub-grid number
            rows = range(a, H, step)
            cols = range(b, W, step)
            idx = []
            if k % 2 == 0:         # even sub-grids row-major
                for i in rows:
                    for j in cols:
                        idx.append(i * W + j)
            else:                  # odd sub-grids column-major
                for j in cols:
                    for i in rows:
                        idx.append(i * W + j)
            subgrids.append(np.array(idx, dtype=np.int64))
    return subgrids


def _atrous(H, W, step=2):
    """EfficientVMamba's ES2D sub-grids concatenated into one permutation."""
    return np.concatenate(_atrous_subgrids(H, W, step)).astype(np.int64)


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanOrder:
    """One entry of :data:`SCAN_ORDERS`.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"snake"``.
    build : callable
        ``build(H, W, **options) -> int64 array (H·W,)``.
    options : dict
        The options this order accepts, with their defaults.
    continuity : str
        ``"4-neighbour"`` when every consecutive pair of tokens are 4-neighbours on
        any grid, ``"4-neighbour, <=1 diagonal"`` for the generalized Hilbert
        curve, ``"jumps"`` otherwise.
    source : str
        Where the order comes from (paper, arXiv id, repository).
    description : str
        One sentence describing the path.
    """

    name: str
    build: Callable = field(repr=False)
    options: dict
    continuity: str
    source: str
    description: str


def _entry(name, build, source, description, continuity="jumps", options=None):
    return ScanOrder(name, build, dict(options or {}), continuity, source, description)


def _reversed_builder(build):
    def reversed_build(H, W, **options):
        return build(H, W, **options)[::-1].copy()
    return reversed_build


_VMAMBA = "Liu et al. 2024, VMamba, arXiv:2401.10166 (CrossScan: flatten and transpose-flatten)"
_VIM = "Zhu et al. 2024, Vision Mamba (Vim), arXiv:2401.09417"
_PLAIN = "Yang et al. 2024, PlainMamba, arXiv:2403.17695 (continuous 2D scanning)"
_ZIGMA = "Hu et al. 2024, ZigMa, arXiv:2403.13802 (8 zigzag scans)"
_RS = "Zhao et al. 2024, RS-Mamba, arXiv:2404.02668 (omnidirectional selective scan)"
_SURVEY = "Rahman et al. 2024, Mamba in Vision survey, arXiv:2410.03105, Fig. 4"
_GILBERT = ("Červený 2019, 'gilbert' generalized Hilbert curve "
            "(github.com/jakubcerveny/gilbert); Hilbert 1891")
_LOCAL = "Huang et al. 2024, LocalMamba, arXiv:2403.09338 (local_scan)"
_EFF = "Pei et al. 2024, EfficientVMamba, arXiv:2403.09977 (ES2D atrous selective scan)"

SCAN_ORDERS: dict[str, ScanOrder] = {
    "raster": _entry(
        "raster", _raster, _VIM + "; " + _VMAMBA,
        "row-major: left to right, row after row; jumps back at each row end"),
    "column": _entry(
        "column", _column, _VMAMBA,
        "column-major: top to bottom, column after column"),
    "raster_reversed": _entry(
        "raster_reversed", _reversed_builder(_raster), _VIM + " (backward direction); " + _VMAMBA,
        "raster read backwards, from the bottom-right corner"),
    "column_reversed": _entry(
        "column_reversed", _reversed_builder(_column), _VMAMBA,
        "column-major read backwards"),
    "snake": _entry(
        "snake", _snake, _PLAIN + "; " + _SURVEY + " (zigzag)",
        "row boustrophedon from the top-left corner", continuity="4-neighbour"),
    "snake_column": _entry(
        "snake_column", _snake_column, _PLAIN,
        "column boustrophedon from the top-left corner", continuity="4-neighbour"),
    "snake_reversed": _entry(
        "snake_reversed", _reversed_builder(_snake), _PLAIN,
        "row snake read backwards", continuity="4-neighbour"),
    "snake_column_reversed": _entry(
        "snake_column_reversed", _reversed_builder(_snake_column), _PLAIN,
        "column snake read backwards", continuity="4-neighbour"),
    "zigzag": _entry(
        "zigzag", _zigzag, _ZIGMA,
        "index 0..7: corners (0,0), (0,W-1), (H-1,0), (H-1,W-1), each with a row "
        "snake (even index) then a column snake (odd index) starting there",
        continuity="4-neighbour", options={"index": 0}),
    "diagonal": _entry(
        "diagonal", _diagonal, _RS,
        "wrapping diagonals: seq[w·H + h] = x[h, (h + w) mod W]"),
    "antidiagonal": _entry(
        "antidiagonal", _antidiagonal, _RS,
        "wrapping anti-diagonals: seq[w·H + h] = x[h, (w - h) mod W]"),
    "diagonal_reversed": _entry(
        "diagonal_reversed", _reversed_builder(_diagonal), _RS, "diagonal read backwards"),
    "antidiagonal_reversed": _entry(
        "antidiagonal_reversed", _reversed_builder(_antidiagonal), _RS,
        "anti-diagonal read backwards"),
    "spiral": _entry(
        "spiral", _spiral, _SURVEY + " (spiral, edge-in)",
        "clockwise from the top-left corner inward", continuity="4-neighbour"),
    "spiral_reversed": _entry(
        "spiral_reversed", _spiral_reversed, _SURVEY + " (spiral, centre-out)",
        "the spiral read backwards: centre out to the top-left corner",
        continuity="4-neighbour"),
    "radial": _entry(
        "radial", _radial, _SURVEY + " (radial)",
        "by distance from the centre, ties by angle clockwise from east"),
    "hilbert": _entry(
        "hilbert", _hilbert, _GILBERT + "; " + _SURVEY + " (Hilbert)",
        "generalized Hilbert curve on any H×W, the classic curve on 2^k squares",
        continuity="4-neighbour, <=1 diagonal"),
    "zorder": _entry(
        "zorder", _zorder, "Morton 1966, Z-order curve; used by serialized point/vision Mambas",
        "Morton codes of the in-range cells, sorted"),
    "local": _entry(
        "local", _local, _LOCAL,
        "windows of window×window row-major, row-major inside each; partial "
        "windows at the edges instead of LocalMamba's zero padding",
        options={"window": 2, "column_first": False}),
    "local_column": _entry(
        "local_column", _local_column, _LOCAL + ", column_first=True",
        "windows column-major, column-major inside each; partial windows at the edges",
        options={"window": 2}),
    "atrous": _entry(
        "atrous", _atrous, _EFF,
        "the step² dilated sub-grids one after the other (ES2D), even sub-grids "
        "row-major, odd ones column-major", options={"step": 2}),
    "quadtree": _entry(
        "quadtree", _quadtree,
        "Zhang et al. 2024, Motion Mamba, arXiv:2403.07487 (hierarchical scan, survey "
        "Fig. 5h); the 2D quadtree form is this library's",
        "blocks of side 2^depth row-major, each read as its four half-side blocks "
        "row-major, recursively: every aligned 2^k block (k <= depth) is one run; "
        "depth 0 is raster, depth 1 the 2×2 local windows, depth k on 2^k×2^k the Z-order",
        options={"depth": 2}),
}


def _check_options(options, defaults, owner, also=""):
    """Validate ``options`` against ``defaults``; return them merged with the defaults.

    ``defaults`` are the options of a scan order (or of a scheme of
    :mod:`ssm_ref.vision.multi`), ``owner`` names it in the message
    (``"scan order 'local'"``) and ``also`` lists what else it accepts.
    """
    for key in options:
        if key not in defaults:
            accepted = ", ".join(sorted(defaults)) or "none"
            raise ValueError(
                f"Parameter {key} = {options[key]!r} is not an option of {owner} "
                f"(it accepts: {accepted}{also})"
            )
    merged = {**defaults, **options}
    for key in ("window", "step"):
        if key in merged:
            merged[key] = check_positive_int(merged[key], key)
    if "index" in merged:
        index = merged["index"]
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, numbers.Integral):
            raise TypeError(f"Parameter index = {index!r} must be an integer in 0..7")
        if not 0 <= int(index) <= 7:
            raise ValueError(f"Parameter index = {index} must be in 0..7 (ZigMa has 8 zigzags)")
        merged["index"] = int(index)
    if "column_first" in merged and not isinstance(merged["column_first"], (bool, np.bool_)):
        raise TypeError(f"Parameter column_first = {merged['column_first']!r} must be a bool")
    return merged


def scan_order(name, H, W, *, reverse=False, **options):
    """Build the scan order ``name`` on an H×W grid.

    Parameters
    ----------
    name : str
        A key of :data:`SCAN_ORDERS`: ``raster``, ``column``, ``raster_reversed``,
        ``column_reversed``, ``snake``, ``snake_column`` (and their
        ``_reversed``), ``zigzag``, ``diagonal``, ``antidiagonal`` (and their
        ``_reversed``), ``spiral``, ``spiral_reversed``, ``radial``, ``hilbert``,
        ``zorder``, ``local``, ``local_column``, ``atrous``.
    H, W : int
        Grid height and width, each >= 1.
    reverse : bool, optional
        Read the order backwards (default False).
    **options
        Order-specific: ``index`` (zigzag, 0..7), ``window`` (local, >= 1),
        ``column_first`` (local), ``step`` (atrous, >= 1).

    Returns
    -------
    perm : ndarray of int64, shape (H·W,)
        ``seq[t] = tokens[perm[t]]`` with row-major ``p = i·W + j``.

    Raises
    ------
    ValueError
        Unknown ``name``, an option the order does not take, H or W < 1,
        ``window`` or ``step`` < 1, ``index`` outside 0..7.
    TypeError
        Non-integer sizes or options.

    Notes
    -----
    Implements the gather of eq-scan-gather; the chapter "Images as sequences"
    draws every order.  LocalMamba pads the grid with zeros to a multiple of
    the window; here the windows at the right and bottom edges are simply
    smaller, which gives the same order of the real tokens with the padding
    tokens left out.  For ``atrous`` with step s the s² sub-grids with offsets
    (a, b) (row, column) are taken with b outer and a inner, sub-grid k = b·s + a
    row-major when k is even and column-major when k is odd; for s = 2 this is
    exactly EfficientVMamba's ES2D order (even/even row-major, odd-row/even-col
    column-major, even/odd row-major, odd/odd column-major).  On odd sizes the
    sub-grids have unequal lengths instead of being padded.

    References
    ----------
    Each registry entry's ``source``; the survey: Rahman et al. 2024,
    arXiv:2410.03105, Section 3.2, Figures 4 and 5.

    Examples
    --------
    >>> scan_order("snake", 3, 4).tolist()
    [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    >>> scan_order("column", 3, 4).tolist()
    [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    >>> scan_order("local", 4, 4, window=2).tolist()
    [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    """
    if not isinstance(name, str):
        raise TypeError(f"Parameter name = {name!r} must be a string naming a scan order")
    check_choice(name, "name", SCAN_ORDERS)
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    if not isinstance(reverse, (bool, np.bool_)):
        raise TypeError(f"Parameter reverse = {reverse!r} must be a bool")
    entry = SCAN_ORDERS[name]
    merged = _check_options(options, entry.options, f"scan order {entry.name!r}",
                            also=", plus reverse")
    perm = entry.build(H, W, **merged)  # (L,)
    if reverse:
        perm = perm[::-1].copy()
    return perm.astype(np.int64, copy=False)


def atrous_subgrids(H, W, step=2):
    """The step² dilated sub-grids of EfficientVMamba's ES2D as separate index arrays.

    Parameters
    ----------
    H, W : int
        Grid size, each >= 1.
    step : int, optional
        The dilation (default 2, as in EfficientVMamba).

    Returns
    -------
    list of ndarray of int64
        ``step**2`` arrays; together they hold every cell exactly once.  Sub-grid
        k = b·step + a holds the cells with ``i % step == a`` and
        ``j % step == b``, row-major for even k and column-major for odd k.  On
        grids smaller than ``step`` some are empty.

    Raises
    ------
    ValueError
        H, W or step < 1.

    Notes
    -----
    ``scan_order("atrous", H, W, step=s)`` is their concatenation.  The ES2D
    scheme of ``ssm_ref.vision.multi`` scans each sub-grid as its own sequence
    and scatters the outputs back without overlap.

    References
    ----------
    Pei et al. 2024, EfficientVMamba, arXiv:2403.09977.

    Examples
    --------
    >>> [g.tolist() for g in atrous_subgrids(4, 4)]
    [[0, 2, 8, 10], [4, 12, 6, 14], [1, 3, 9, 11], [5, 13, 7, 15]]
    """
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    step = check_positive_int(step, "step")
    return _atrous_subgrids(H, W, step)


# ---------------------------------------------------------------------------
# Video: (T, H, W) grids, flat index q = t·H·W + p
# ---------------------------------------------------------------------------

def _spatial_first(T, H, W, spatial):
    """Frame after frame; inside a frame the 2D order ``spatial``."""
    HW = H * W
    perm = []
    for t in range(T):
        for k in range(HW):
            perm.append(t * HW + spatial[k])
    return np.array(perm, dtype=np.int64)


def _temporal_first(T, H, W, spatial):
    """Each spatial position through all frames: seq[k·T + t] = x[t, spatial[k]]."""
    HW = H * W
    perm = np.empty(T * HW, dtype=np.int64)
    for k in range(HW):
        for t in range(T):
            perm[k * T + t] = t * HW + spatial[k]
    return perm


SCAN_ORDERS_3D: dict[str, str] = {
    "spatial_first": "frame by frame, the 2D order inside each frame (VideoMamba, "
                     "Li et al. 2024, arXiv:2403.06977; Vivim, arXiv:2401.14168)",
    "spatial_first_reversed": "spatial_first read backwards (the backward direction "
                              "of a bidirectional video scan)",
    "temporal_first": "each spatial position through all frames: seq[p·T + t] = x[t, p]",
    "temporal_first_reversed": "temporal_first read backwards",
}


def scan_order_3d(name, T, H, W, *, spatial="raster", **options):
    """Build a video scan order on a (T, H, W) grid of tokens.

    Parameters
    ----------
    name : str
        ``"spatial_first"``, ``"temporal_first"`` or either with ``"_reversed"``
        (the backward half of a bidirectional scan).
    T, H, W : int
        Frames, height, width; each >= 1.
    spatial : str, optional
        The 2D order used for the spatial positions (default ``"raster"``).
    **options
        Passed to ``scan_order(spatial, H, W, **options)``.

    Returns
    -------
    perm : ndarray of int64, shape (T·H·W,)
        Indices into the flat (T, H, W) grid, q = t·H·W + i·W + j.

    Raises
    ------
    ValueError
        Unknown ``name`` or ``spatial``, T, H or W < 1.

    Notes
    -----
    Spatial-first reads frame after frame; temporal-first reads the whole time
    line of one position before moving on (seq[p·T + t] = x[t, p] with the
    raster spatial order).  The survey's Fig. 5b (Vivim's spatiotemporal scan)
    combines such sequences with their reverses.

    References
    ----------
    Li et al. 2024, VideoMamba, arXiv:2403.06977; Yang et al. 2024, Vivim,
    arXiv:2401.14168; Rahman et al. 2024, arXiv:2410.03105, Fig. 5b.

    Examples
    --------
    >>> scan_order_3d("temporal_first", 2, 1, 3).tolist()
    [0, 3, 1, 4, 2, 5]
    """
    if not isinstance(name, str):
        raise TypeError(f"Parameter name = {name!r} must be a string naming a video scan order")
    check_choice(name, "name", SCAN_ORDERS_3D)
    T = check_positive_int(T, "T")
    spatial_perm = scan_order(spatial, H, W, **options)  # (H·W,) validates H, W, spatial
    base = name.replace("_reversed", "")
    if base == "spatial_first":
        perm = _spatial_first(T, H, W, spatial_perm)  # (T·H·W,)
    else:
        perm = _temporal_first(T, H, W, spatial_perm)  # (T·H·W,)
    if name.endswith("_reversed"):
        perm = perm[::-1].copy()
    return perm


# ---------------------------------------------------------------------------
# Using an order: inverse, gather, scatter
# ---------------------------------------------------------------------------

def _as_index(perm, name, n_cells=None, full=True):
    """Validate an index array: 1-D integers, distinct, in range; a permutation if ``full``."""
    arr = to_host(perm)  # indices are small and validated on the host
    if arr.ndim != 1:
        raise ValueError(f"Parameter {name} has shape {arr.shape} but should be 1-D (L,)")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"Parameter {name} has dtype {arr.dtype} but an integer array was expected")
    arr = arr.astype(np.int64, copy=False)
    n = arr.size if n_cells is None else n_cells
    if full and arr.size != n:
        raise ValueError(
            f"Parameter {name} has length {arr.size} but should be H·W = {n} "
            "(a full permutation of the grid)"
        )
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(
            f"Parameter {name} has entries in [{arr.min()}, {arr.max()}] "
            f"but they should lie in [0, {n - 1}]"
        )
    if np.unique(arr).size != arr.size:
        raise ValueError(f"Parameter {name} repeats some indices; each cell may appear once")
    return arr


def inverse(perm):
    """The inverse permutation: ``inv[perm[t]] = t``, the sequence position of each cell.

    Parameters
    ----------
    perm : array_like of int, shape (L,)
        A permutation of 0..L-1.

    Returns
    -------
    inv : ndarray of int64, shape (L,)

    Raises
    ------
    ValueError
        ``perm`` is not 1-D or not a permutation of 0..L-1.

    Examples
    --------
    >>> perm = scan_order("column", 2, 3)
    >>> perm.tolist(), inverse(perm).tolist()
    ([0, 3, 1, 4, 2, 5], [0, 2, 4, 1, 3, 5])
    """
    return _inverted(_as_index(perm, "perm"))


def _inverted(perm):
    """:func:`inverse` of a host ``perm`` known to be a permutation, unchecked."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)  # inv[perm[t]] = t for every t
    return inv


def _check_tokens(x, name):
    if not hasattr(x, "ndim"):
        x = np.asarray(x)
    if x.dtype.kind not in "biufc":
        raise TypeError(f"Parameter {name} has dtype {x.dtype} but a numeric array was expected")
    return x


def to_sequence(x, perm, *, check=True):
    """Gather image tokens into a sequence in the scan order ``perm``:
    ``seq[:, t] = x[:, perm[t]]``.

    Parameters
    ----------
    x : ndarray, shape (B, H, W, C) or (B, L, C)
        Tokens, channels last (NumPy, or CuPy on a GPU).
    perm : array_like of int, shape (L',)
        Distinct cell indices; usually a full scan order (L' = H·W), or a
        part of the grid such as one ES2D sub-grid.  A NumPy array: it is
        validated on the host, and for device tokens its device copy is made
        once and cached (a device ``perm`` is copied to the host to be checked).

    Returns
    -------
    seq : ndarray, shape (B, L', C)
        Same dtype and array module as ``x``.

    Raises
    ------
    ValueError
        ``x`` not 3-D or 4-D; ``perm`` not 1-D, repeated or out of range.

    Notes
    -----
    Implements eq-scan-gather.  A pure gather: no arithmetic, dtype kept.

    Examples
    --------
    >>> x = np.arange(6.0).reshape(1, 2, 3, 1)
    >>> to_sequence(x, scan_order("column", 2, 3))[0, :, 0].tolist()
    [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """
    if check:
        x = _check_tokens(x, "x")
    if x.ndim == 4:
        Bsz, H, W, C = x.shape
        tokens = x.reshape(Bsz, H * W, C)  # (B, L, C)
    elif x.ndim == 3:
        tokens = x  # (B, L, C)
    else:
        raise ValueError(
            f"Parameter x has shape {tuple(x.shape)} but should be (B, H, W, C) or (B, L, C)"
        )
    if check:  # a block's internal call passes check=False with an order it built itself
        perm = _as_index(perm, "perm", n_cells=tokens.shape[1], full=False)  # host, validated
    return tokens[:, on_module_cached(perm, array_module(tokens))]  # (B, L', C)


def from_sequence(y, perm, H, W, *, check=True):
    """Scatter a sequence back onto the H×W grid: ``out[:, perm[t]] += y[:, t]``.

    Parameters
    ----------
    y : ndarray, shape (B, L', C)
        Sequence outputs in scan order (NumPy, or CuPy on a GPU).
    perm : array_like of int, shape (L',)
        The distinct cell indices ``y`` was gathered with (a full scan order,
        or part of the grid; cells not in ``perm`` stay zero).  A NumPy
        array, as in :func:`to_sequence`.
    H, W : int
        Grid size.

    Returns
    -------
    out : ndarray, shape (B, H, W, C)
        Same dtype and array module as ``y``.

    Raises
    ------
    ValueError
        ``y`` not 3-D, its length not ``len(perm)``, ``perm`` out of range of
        H·W or repeated, H or W < 1.

    Notes
    -----
    Implements eq-scan-scatter, an addition into zeros so that the merge of
    several directions (``multi_merge``) is a plain sum of these.  ``perm`` has
    no repeats, so each cell is added to once and the addition is an
    assignment: ``out[:, perm] = y`` (NumPy's ``out[:, perm] += y`` gathers,
    adds and scatters; the assignment took a quarter of its time at B, L, C =
    64, 256, 24).  A full order (L' = H·W) leaves no cell at zero, and the
    same values are the gather ``y[:, inverse(perm)]``, NumPy's ``take``: no
    zeros written first, and 0.35-0.40 ms against 0.86-0.97 for the assignment
    at that size (float64).

    Examples
    --------
    >>> perm = scan_order("spiral", 2, 2)
    >>> y = to_sequence(np.arange(4.0).reshape(1, 2, 2, 1), perm)
    >>> from_sequence(y, perm, 2, 2)[0, :, :, 0].tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    """
    if check:  # a block's internal call passes check=False with an order it built itself
        y = _check_tokens(y, "y")
        H = check_positive_int(H, "H")
        W = check_positive_int(W, "W")
        if y.ndim != 3:
            raise ValueError(f"Parameter y has shape {tuple(y.shape)} but should be (B, L, C)")
        perm = _as_index(perm, "perm", n_cells=H * W, full=False)
        if y.shape[1] != perm.size:
            raise ValueError(
                f"Parameter y has shape {tuple(y.shape)} but should be ({y.shape[0]}, "
                f"{perm.size}, {y.shape[2]}) to match perm of length {perm.size}"
            )
    Bsz, L, C = y.shape
    xp = array_module(y)
    if L == H * W:  # a full order: cell perm[t] gets y[:, t], so out[:, c] = y[:, inv[c]]
        inv = on_module_cached(_inverted(perm), xp)
        return xp.take(y, inv, axis=1).reshape(Bsz, H, W, C)
    # [book:scan-scatter]
    out = xp.zeros((Bsz, H * W, C), dtype=y.dtype)  # (B, L, C) on y's device
    # vectorised form of: for t in range(L): out[:, perm[t]] += y[:, t]; perm has no repeats,
    # so each cell is written once and += into zeros is =
    out[:, on_module_cached(perm, xp)] = y
    return out.reshape(Bsz, H, W, C)  # (B, H, W, C)
    # [/book:scan-scatter]


# ---------------------------------------------------------------------------
# Locality statistics and drawings
# ---------------------------------------------------------------------------

def locality_stats(perm, H, W, *, near=4):
    """How well a scan order keeps 2D neighbours close in 1D.

    Parameters
    ----------
    perm : array_like of int, shape (H·W,)
        A scan order.
    H, W : int
        Grid size.
    near : int, optional
        Threshold for ``neighbour_fraction_near`` (default 4).

    Returns
    -------
    dict
        ``mean_jump_euclidean``, ``max_jump_euclidean``, ``mean_jump_manhattan``,
        ``max_jump_manhattan``: the spatial distance between consecutive tokens
        ``perm[t]`` and ``perm[t+1]``;
        ``neighbour_step_fraction``: the fraction of those L-1 steps that go to a
        4-neighbour; ``diagonal_steps``: the number of steps to a diagonal
        neighbour; ``mean_neighbour_seq_distance`` and
        ``max_neighbour_seq_distance``: over every pair of 4-adjacent cells, the
        distance |t_p - t_q| between their positions in the sequence;
        ``median_neighbour_seq_distance``; ``neighbour_fraction_near``: the
        fraction of those pairs at most ``near`` steps apart (and ``near``);
        ``n_steps`` (L - 1) and ``n_adjacent_pairs`` (H(W-1) + W(H-1)).
        Means over an empty set (a 1×1 grid) are NaN.

    Raises
    ------
    ValueError
        ``perm`` is not a permutation of 0..H·W-1.

    Notes
    -----
    Raster order makes every step but the row ends a 4-neighbour step, yet
    puts vertical neighbours W positions apart: this is the locality problem of
    flattening that the survey (Section 6.2) describes.  The mean neighbour
    distance is dominated by the few pairs a curve splits far apart; the median
    and ``neighbour_fraction_near`` show how many pairs stay close.

    Examples
    --------
    >>> s = locality_stats(scan_order("raster", 2, 2), 2, 2)
    >>> s["mean_jump_manhattan"], s["neighbour_step_fraction"], s["mean_neighbour_seq_distance"]
    (1.3333333333333333, 0.6666666666666666, 1.5)
    """
    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    near = check_positive_int(near, "near")
    perm = _as_index(perm, "perm", n_cells=H * W, full=True)
    L = H * W
    euclid, manhattan = [], []
    n_neighbour, n_diagonal = 0, 0
    for t in range(L - 1):
        i0, j0 = divmod(int(perm[t]), W)
        i1, j1 = divmod(int(perm[t + 1]), W)
        di, dj = abs(i1 - i0), abs(j1 - j0)
        euclid.append(math.hypot(di, dj))
        manhattan.append(di + dj)
        n_neighbour += (di + dj == 1)
        n_diagonal += (di == 1 and dj == 1)
    pos = inverse(perm).reshape(H, W)  # (H, W) sequence position of each cell
    gaps = []
    for i in range(H):
        for j in range(W):
            if j + 1 < W:
                gaps.append(abs(int(pos[i, j + 1]) - int(pos[i, j])))
            if i + 1 < H:
                gaps.append(abs(int(pos[i + 1, j]) - int(pos[i, j])))
    nan = float("nan")
    return {
        "mean_jump_euclidean": float(np.mean(euclid)) if euclid else nan,
        "max_jump_euclidean": float(np.max(euclid)) if euclid else nan,
        "mean_jump_manhattan": float(np.mean(manhattan)) if manhattan else nan,
        "max_jump_manhattan": float(np.max(manhattan)) if manhattan else nan,
        "neighbour_step_fraction": n_neighbour / (L - 1) if L > 1 else nan,
        "diagonal_steps": int(n_diagonal),
        "mean_neighbour_seq_distance": float(np.mean(gaps)) if gaps else nan,
        "max_neighbour_seq_distance": float(np.max(gaps)) if gaps else nan,
        "median_neighbour_seq_distance": float(np.median(gaps)) if gaps else nan,
        "neighbour_fraction_near": float(np.mean(np.array(gaps) <= near)) if gaps else nan,
        "near": near,
        "n_steps": L - 1,
        "n_adjacent_pairs": len(gaps),
    }
