"""Pictures of scan orders: a scan order drawn as a path over the grid.

Plotting only; the orders themselves are in :mod:`ssm_ref.vision.scan_orders`.
Matplotlib is imported inside the function, so ``ssm_ref`` does not need it.

Glossary
--------
H, W      height and width of the token grid.
perm      a scan order, ``seq[t] = tokens[perm[t]]`` (row-major cell index i·W + j).

Book chapter: "Images as sequences" (label ``images-as-sequences``); survey:
Rahman et al. 2024, arXiv:2410.03105, Figures 4 and 5.
"""
from __future__ import annotations

import numpy as np

from .._validation import check_positive_int
from .scan_orders import _as_index

__all__ = ["draw_scan_order"]


def draw_scan_order(perm, H, W, ax=None, *, annotate=None, cmap="viridis",
                    linewidth=2.0, title=None, max_step=1):
    """Draw a scan order as a path over the H×W grid (the survey's Figures 4 and 5).

    Steps between 4- or diagonal neighbours (more generally, cells at most
    ``max_step`` apart in both row and column) are solid and coloured by time
    (``cmap``, dark = early); longer jumps are thin dotted grey lines.  The
    start is a circle, the end a square.

    Parameters
    ----------
    perm : array_like of int, shape (L',)
        A scan order, or part of the grid (one ES2D sub-grid).
    H, W : int
        Grid size.
    ax : matplotlib Axes, optional
        Where to draw; a new figure if None.
    annotate : bool, optional
        Write the sequence position in each visited cell; default: when H·W <= 36.
    cmap : str, optional
        Matplotlib colour map for time.
    linewidth : float, optional
    title : str, optional
    max_step : int, optional
        Largest row/column offset drawn as a solid step (default 1; 2 shows the
        dilated steps of an atrous order).

    Returns
    -------
    ax : matplotlib Axes

    Raises
    ------
    ValueError
        ``perm`` repeated or out of range.

    Notes
    -----
    Matplotlib is imported inside the function, so ``ssm_ref`` does not need it.
    Column j is the x axis, row i the y axis pointing down (row 0 on top).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from ssm_ref.vision import scan_order
    >>> ax = draw_scan_order(scan_order("hilbert", 4, 4), 4, 4)
    >>> len(ax.collections) >= 1
    True
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    H = check_positive_int(H, "H")
    W = check_positive_int(W, "W")
    max_step = check_positive_int(max_step, "max_step")
    perm = _as_index(perm, "perm", n_cells=H * W, full=False)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.5 * W + 1, 0.5 * H + 1))
    rows, cols = np.divmod(perm, W)  # (L',) each
    # light cell grid
    for i in range(H + 1):
        ax.plot([-0.5, W - 0.5], [i - 0.5, i - 0.5], color="0.85", lw=0.6, zorder=0)
    for j in range(W + 1):
        ax.plot([j - 0.5, j - 0.5], [-0.5, H - 0.5], color="0.85", lw=0.6, zorder=0)
    near, far, times = [], [], []
    n = perm.size
    for t in range(n - 1):
        seg = [(cols[t], rows[t]), (cols[t + 1], rows[t + 1])]
        if max(abs(rows[t + 1] - rows[t]), abs(cols[t + 1] - cols[t])) <= max_step:
            near.append(seg)
            times.append(t / max(n - 2, 1))
        else:
            far.append(seg)
    if far:
        ax.add_collection(LineCollection(far, colors="0.55", linewidths=0.7,
                                         linestyles="dotted", zorder=1))
    if near:
        lc = LineCollection(near, cmap=cmap, linewidths=linewidth, zorder=2)
        lc.set_array(np.asarray(times))
        lc.set_clim(0.0, 1.0)
        ax.add_collection(lc)
    if n:
        ax.plot(cols[0], rows[0], "o", color="tab:green", ms=6, zorder=3)
        ax.plot(cols[-1], rows[-1], "s", color="tab:red", ms=6, zorder=3)
    if annotate is None:
        annotate = H * W <= 36
    if annotate:
        for t in range(n):
            ax.text(cols[t] + 0.28, rows[t] - 0.22, str(t), fontsize=6,
                    ha="center", va="center", color="0.3", zorder=4)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=8)
    return ax
