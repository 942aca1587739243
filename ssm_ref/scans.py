"""Scan algorithms for the first-order linear recurrence h_t = a_t h_{t-1} + b_t.

Glossary
--------
=========  ===============================================================
L          sequence length (the last axis of every array here)
...        any leading batch axes (batch, channels, state: all independent)
a, b       (..., L) coefficients of the recurrence, real or complex
h0         (...) initial state h_{-1} (zero when not given)
h          (..., L) all states h_0 .. h_{L-1}
(a, b)     one element of the scan: the affine map h -> a h + b
n          padded length of the Blelloch scan, the next power of two >= L
T          chunk (or block) size; ``n_chunks = ceil(L / T)``
work       number of applications of the combine operator (per sequence)
depth      number of rounds that must run one after another
=========  ===============================================================

A selective SSM (Mamba's S6) is, channel by channel and state by state, such
a recurrence with ``a_t = exp(delta_t A)`` and ``b_t = delta_t B_t u_t``
(book chapter "Selective state spaces"); every function here solves it.
Each element ``(a_t, b_t)`` is an affine map, and chaining maps is
associative (book equation ``eq-scan-op``), which is what lets the L steps
run in O(log L) rounds instead of L:

=====================  ==========  ============  =========================
function               work        depth         idea
=====================  ==========  ============  =========================
scan_sequential        L           L             the plain loop
scan_hillis_steele     ~ L log L   ceil(log2 L)  step-efficient prefix scan
scan_blelloch          2 (n - 1)   2 log2 n      work-efficient prefix scan
scan_chunked           ~ 2 L       ~ T + L / T   scan in chunks, carry prefix
scan_logspace          cumsums     (cumsum)      h = P (h0 + cumsum(b / P))
=====================  ==========  ============  =========================

All functions take ``a, b`` of the same shape (..., L) and an optional ``h0``
of shape (...), compute in float64 (complex128 if anything is complex) and
return ``h`` in the input dtype (``np.result_type`` of a, b and h0), so
float32 in gives float32 out.  The book chapter is "Scanning in parallel"
(``tutorials/05_parallel_scan.md``).

References
----------
W. D. Hillis and G. L. Steele, "Data parallel algorithms", CACM 29(12), 1986.
G. E. Blelloch, "Prefix sums and their applications", CMU-CS-90-190, 1990.
A. Gu and T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", 2023, arXiv:2312.00752 (the hardware-aware, chunked scan).
E. Martin and C. Cundy, "Parallelizing Linear Recurrent Neural Nets Over
Sequence Length", 2018, arXiv:1709.04057 (the recurrence as a scan).
T. Dao and A. Gu, "Transformers are SSMs", 2024, arXiv:2405.21060 (the
stable "segsum" used by the ``segsum`` variant of :func:`scan_logspace`).
"""
from __future__ import annotations

import warnings

import numpy as np

from ._validation import (as_array, check_choice, check_finite,
                          check_positive_int, check_shape)

__all__ = [
    "SCAN_METHODS",
    "LOGSPACE_VARIANTS",
    "scan",
    "scan_sequential",
    "scan_combine",
    "scan_hillis_steele",
    "scan_blelloch",
    "scan_chunked",
    "scan_logspace",
]

#: Names accepted by :func:`scan` as ``method``.
SCAN_METHODS = ("sequential", "hillis_steele", "blelloch", "chunked", "logspace")

#: Names accepted by :func:`scan_logspace` as ``variant``.
LOGSPACE_VARIANTS = ("naive", "segsum", "logsumexp")

# exp(x) overflows float64 for x > log(max float64) ~ 709.78
_LOG_MAX = float(np.log(np.finfo(np.float64).max))


# ---------------------------------------------------------------------------
# input checks (public entry points only)
# ---------------------------------------------------------------------------
def _prepare(a, b, h0):
    """Validate ``a, b, h0``; return float64/complex128 copies and the out dtype.

    Returns ``(a, b, h0, out_dtype)`` with ``a, b`` of shape (..., L) and
    ``h0`` of shape (...) (zeros when not given), all in the compute dtype.
    """
    a = as_array(a, "a")
    b = as_array(b, "b")
    if a.ndim < 1:
        raise ValueError(
            f"Parameter a has shape {a.shape} (0-D) but should have at least "
            "one axis, the time axis (..., L)"
        )
    if a.shape[-1] < 1:
        raise ValueError(
            f"Parameter a has shape {a.shape} but the time axis (last) must "
            "have length L >= 1"
        )
    if b.shape != a.shape:  # same shape as a: no silent broadcasting
        raise ValueError(f"Parameter b has shape {b.shape} but should be {a.shape}, "
                         "the shape of a")
    check_finite(a, "a")
    check_finite(b, "b")
    arrays = [a, b]
    if h0 is not None:
        h0 = as_array(h0, "h0")
        check_shape(h0, "h0", a.shape[:-1])
        check_finite(h0, "h0")
        arrays.append(h0)
    out_dtype = np.result_type(*arrays)
    work = np.complex128 if out_dtype.kind == "c" else np.float64
    a = a.astype(work)  # (..., L), a copy: callers may write into it
    b = b.astype(work)  # (..., L)
    if h0 is None:
        h0 = np.zeros(a.shape[:-1], dtype=work)  # (...)
    else:
        h0 = h0.astype(work)  # (...)
    return a, b, h0, out_dtype


def _finish(h, out_dtype):
    """Cast the float64/complex128 result back to the caller's dtype."""
    if out_dtype.kind != "c" and np.iscomplexobj(h):
        h = h.real  # real inputs computed through complex logs
    return h.astype(out_dtype, copy=False)


def _combine(x, y):
    """(a1, b1) o (a2, b2) = (a2 a1, a2 b1 + b2), no checks (inner helper)."""
    a1, b1 = x
    a2, b2 = y
    return a2 * a1, a2 * b1 + b2


def _fold_h0(a, b, h0):
    """Absorb the initial state into the first element: b_0 <- a_0 h0 + b_0.

    Then the state is the b-part of the inclusive scan from a zero start:
    (., h0) o (a_0, b_0) = (., a_0 h0 + b_0).
    """
    b = b.copy()
    b[..., 0] = a[..., 0] * h0 + b[..., 0]
    return b


# ---------------------------------------------------------------------------
# the sequential scan and the operator
# ---------------------------------------------------------------------------
def scan_sequential(a, b, h0=None):
    """Solve ``h_t = a_t h_{t-1} + b_t`` with the plain loop over time.

    Parameters
    ----------
    a, b : array_like, shape (..., L)
        Coefficients, real or complex, same shape (no broadcasting).
    h0 : array_like, shape (...), optional
        Initial state ``h_{-1}``; zero when not given.

    Returns
    -------
    h : ndarray, shape (..., L)
        All states, in the dtype of the inputs (computed in float64, or
        complex128 when anything is complex).

    Raises
    ------
    ValueError
        If the shapes differ, ``h0`` is not of shape ``a.shape[:-1]``, L is 0
        or an input is not finite.
    TypeError
        If an input is not a real or complex floating-point array.

    Notes
    -----
    Implements ``eq-scan-recurrence``.  Work L multiply-adds, depth L: each
    step waits for the one before.  This is the oracle the other algorithms
    are tested against.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import scan_sequential
    >>> scan_sequential(np.array([0.5, 0.5, 0.5]), np.array([1.0, 1.0, 1.0]))
    array([1.  , 1.5 , 1.75])
    >>> scan_sequential([0.5, 0.5], [0.0, 0.0], h0=8.0)
    array([4., 2.])
    """
    a, b, h0, out_dtype = _prepare(a, b, h0)
    # [book:scan-sequential]
    L = a.shape[-1]
    h = np.empty_like(b)  # (..., L)
    state = h0  # (...)
    for t in range(L):
        state = a[..., t] * state + b[..., t]  # (...)
        h[..., t] = state
    # [/book:scan-sequential]
    return _finish(h, out_dtype)


def scan_combine(x, y):
    """The associative operator of the scan: ``(a1, b1) o (a2, b2)``.

    ``x = (a1, b1)`` is the *earlier* element, ``y = (a2, b2)`` the later one::

        (a1, b1) o (a2, b2) = (a2 * a1, a2 * b1 + b2)

    Parameters
    ----------
    x, y : tuple of two array_like
        Each pair ``(a, b)`` stands for the affine map ``h -> a h + b``.
        All four arrays must have the same shape; the operation is
        elementwise.

    Returns
    -------
    (a, b) : tuple of ndarray
        The pair of the composed map "first x, then y".

    Raises
    ------
    ValueError
        If the four arrays do not have one common shape.

    Notes
    -----
    Implements ``eq-scan-op``.  Why it is associative: the pair (a, b) is
    the affine map f(h) = a h + b, and ``x o y`` is the composition "apply
    f_x, then f_y": f_y(f_x(h)) = a2 (a1 h + b1) + b2 = (a2 a1) h +
    (a2 b1 + b2).  Composition of functions is associative, so
    ``(x o y) o z == x o (y o z)``; written out, both sides equal
    ``(a3 a2 a1, a3 a2 b1 + a3 b2 + b3)``.  The identity is ``(1, 0)``
    (the map h -> h), used to pad.  The operator is *not* commutative, so
    the order of the arguments matters.  In floating point the two
    bracketings agree only up to rounding.

    Examples
    --------
    >>> from ssm_ref import scan_combine
    >>> scan_combine((2.0, 1.0), (3.0, 4.0))  # h -> 3 (2 h + 1) + 4
    (6.0, 7.0)
    >>> scan_combine((1.0, 0.0), (3.0, 4.0))  # the identity on the left
    (3.0, 4.0)
    """
    if len(x) != 2 or len(y) != 2:
        raise ValueError("Parameters x and y must each be a pair (a, b)")
    arrays = [np.asarray(v) for v in (*x, *y)]
    shapes = [v.shape for v in arrays]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"Parameters x = (a1, b1) and y = (a2, b2) have shapes {shapes} "
            "but all four must have the same shape"
        )
    a, b = _combine(arrays[:2], arrays[2:])
    if a.ndim == 0:  # scalars in, Python scalars out
        return a.item(), b.item()
    return a, b


# ---------------------------------------------------------------------------
# parallel prefix scans: Hillis-Steele and Blelloch
# ---------------------------------------------------------------------------
def scan_hillis_steele(a, b, h0=None, return_stats=False):
    """Inclusive scan by recursive doubling (Hillis and Steele, 1986).

    In round k = 0, 1, ..., every element i >= 2^k is combined with the
    element 2^k places before it, all elements at once::

        x_i <- x_{i - 2^k} o x_i

    After round k element i holds the combination of the 2^(k+1) elements
    ending at i, so after ceil(log2 L) rounds it holds x_0 o ... o x_i,
    whose b-part is h_i.

    Parameters
    ----------
    a, b : array_like, shape (..., L)
        Coefficients, real or complex, same shape.
    h0 : array_like, shape (...), optional
        Initial state; folded into the first element (b_0 <- a_0 h0 + b_0)
        before the scan, which is not counted as work.
    return_stats : bool, default False
        Also return ``dict(work=..., depth=...)``.

    Returns
    -------
    h : ndarray, shape (..., L)
        All states, in the input dtype.
    stats : dict, only if ``return_stats``
        ``work``: applications of the combine operator per sequence,
        sum over rounds k of (L - 2^k), O(L log L).
        ``depth``: rounds, ceil(log2 L) (0 for L = 1).

    Raises
    ------
    ValueError, TypeError
        As :func:`scan_sequential`.

    Notes
    -----
    Implements ``eq-scan-op`` with the step-efficient (Hillis-Steele)
    algorithm of the chapter "Scanning in parallel": fewest rounds, but
    ~ log2 L times the work of the sequential loop.  Each round reads the
    previous round's values only ("double buffering"), as a GPU would.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import scan_hillis_steele
    >>> h, stats = scan_hillis_steele(np.full(8, 0.5), np.ones(8),
    ...                               return_stats=True)
    >>> h[:3]
    array([1.  , 1.5 , 1.75])
    >>> stats
    {'work': 17, 'depth': 3}
    """
    a, b, h0, out_dtype = _prepare(a, b, h0)
    # [book:scan-hillis-steele]
    L = a.shape[-1]
    A = a  # (..., L) running a-part
    Bv = _fold_h0(a, b, h0)  # (..., L) running b-part
    work, depth = 0, 0
    offset = 1  # 2^k
    while offset < L:
        # every i >= offset reads element i - offset from the previous round
        earlier = (A[..., :-offset], Bv[..., :-offset])  # (..., L - offset)
        later = (A[..., offset:], Bv[..., offset:])  # (..., L - offset)
        A_new, B_new = _combine(earlier, later)  # (..., L - offset)
        A = np.concatenate([A[..., :offset], A_new], axis=-1)  # (..., L)
        Bv = np.concatenate([Bv[..., :offset], B_new], axis=-1)  # (..., L)
        work += L - offset
        depth += 1
        offset *= 2
    # [/book:scan-hillis-steele]
    h = _finish(Bv, out_dtype)
    if return_stats:
        return h, dict(work=work, depth=depth)
    return h


def scan_blelloch(a, b, h0=None, return_stats=False):
    """Work-efficient scan: up-sweep (reduce) and down-sweep (Blelloch, 1990).

    The sequence is padded to n = 2^m >= L with the identity (1, 0) and seen
    as the leaves of a balanced binary tree.

    * Up-sweep, levels d = 0 .. m-1: the right child of every pair of
      subtrees of size 2^d takes the combination of both
      (``x[r] <- x[r - 2^d] o x[r]``); afterwards x[n-1] holds the total.
    * The root is set to the identity.
    * Down-sweep, levels d = m-1 .. 0: every node passes its prefix to its
      left child and ``prefix o (left subtree total)`` to its right child.
      Afterwards x[i] holds the *exclusive* prefix x_0 o ... o x_{i-1}.

    The inclusive result (h_i, the b-part of x_0 o ... o x_i) is the
    exclusive result shifted by one, with the total (saved before the root
    was cleared) as the last entry: no extra combines.

    Parameters
    ----------
    a, b : array_like, shape (..., L)
        Coefficients, real or complex, same shape.
    h0 : array_like, shape (...), optional
        Initial state; folded into the first element before the scan.
    return_stats : bool, default False
        Also return ``dict(work=..., depth=..., n=...)``.

    Returns
    -------
    h : ndarray, shape (..., L)
        All states, in the input dtype.
    stats : dict, only if ``return_stats``
        ``work``: combines per sequence, (n - 1) in each sweep, 2 (n - 1) in
        all, O(L).  ``depth``: levels, 2 log2 n.  ``n``: padded length.

    Raises
    ------
    ValueError, TypeError
        As :func:`scan_sequential`.

    Notes
    -----
    Implements ``eq-scan-op``.  Each level is one vectorised operation over
    the indices of that level (all independent), and the loops over levels
    are the rounds.  Since the operator does not commute, the down-sweep
    must put the prefix on the *left*: right child <- prefix o left total.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import scan_blelloch
    >>> h, stats = scan_blelloch(np.full(5, 0.5), np.ones(5), return_stats=True)
    >>> h
    array([1.    , 1.5   , 1.75  , 1.875 , 1.9375])
    >>> stats
    {'work': 14, 'depth': 6, 'n': 8}
    """
    a, b, h0, out_dtype = _prepare(a, b, h0)
    # [book:scan-blelloch]
    L = a.shape[-1]
    lead = a.shape[:-1]
    n = 1 << (L - 1).bit_length()  # next power of two >= L
    levels = n.bit_length() - 1  # log2 n
    A = np.ones(lead + (n,), dtype=a.dtype)  # (..., n) padded with identity
    Bv = np.zeros(lead + (n,), dtype=a.dtype)  # (..., n)
    A[..., :L] = a
    Bv[..., :L] = _fold_h0(a, b, h0)
    work, depth = 0, 0

    # up-sweep (reduce): pairs of subtrees of size 2^d merge into their right one
    for d in range(levels):
        half = 2 ** d
        right = np.arange(2 * half - 1, n, 2 * half)  # (n / 2^(d+1),)
        left = right - half
        A[..., right], Bv[..., right] = _combine(
            (A[..., left], Bv[..., left]), (A[..., right], Bv[..., right]))
        work += right.size
        depth += 1

    total_b = Bv[..., n - 1].copy()  # (...) b-part of x_0 o ... o x_{n-1}
    A[..., n - 1], Bv[..., n - 1] = 1, 0  # the root gets the identity

    # down-sweep: prefix to the left child, prefix o left-total to the right
    for d in reversed(range(levels)):
        half = 2 ** d
        right = np.arange(2 * half - 1, n, 2 * half)  # (n / 2^(d+1),)
        left = right - half
        left_total = (A[..., left], Bv[..., left])  # fancy indexing copies
        prefix = (A[..., right], Bv[..., right])
        A[..., left], Bv[..., left] = prefix
        A[..., right], Bv[..., right] = _combine(prefix, left_total)
        work += right.size
        depth += 1

    # exclusive -> inclusive: h_i is the exclusive prefix of element i + 1
    inclusive_b = np.concatenate([Bv[..., 1:], total_b[..., None]], axis=-1)  # (..., n)
    # [/book:scan-blelloch]
    h = _finish(inclusive_b[..., :L], out_dtype)  # (..., L)
    if return_stats:
        return h, dict(work=work, depth=depth, n=n)
    return h


# ---------------------------------------------------------------------------
# the chunked scan of the hardware-aware kernel
# ---------------------------------------------------------------------------
def scan_chunked(a, b, h0=None, chunk_size=64, return_chunk_states=False):
    """Scan in chunks and carry the running prefix across them.

    This is the scheme of Mamba's hardware-aware kernel (one chunk of the
    sequence fits in fast on-chip memory at a time):

    1. Inside every chunk of ``T = chunk_size`` steps, scan from a zero
       state: ``h_local`` and the running product ``A_local[t] = prod of
       a_s over the chunk up to t``.  Chunks are independent (done for all
       chunks at once here; one thread block per chunk on a GPU).
    2. Each chunk is summarised by one element ``(A_chunk, B_chunk) =
       (A_local[-1], h_local[-1])``; these are combined from left to right
       to carry the state entering every chunk (``carry``).
    3. The carry is applied inside each chunk:
       ``h_t = h_local_t + A_local_t * carry`` (eq-scan-chunk).

    The last chunk is padded with the identity (1, 0) when T does not divide
    L; the padding does not change any state.

    Parameters
    ----------
    a, b : array_like, shape (..., L)
        Coefficients, real or complex, same shape.
    h0 : array_like, shape (...), optional
        Initial state, the carry entering the first chunk.
    chunk_size : int, default 64
        Steps per chunk, ``T >= 1``.
    return_chunk_states : bool, default False
        Also return the states at the end of each chunk, the values the CUDA
        kernel stores for its backward pass (the last one is the final state).

    Returns
    -------
    h : ndarray, shape (..., L)
        All states, in the input dtype.
    chunk_states : ndarray, shape (..., ceil(L / T)), only if requested
        ``chunk_states[..., c] = h[..., min((c + 1) T, L) - 1]``.

    Raises
    ------
    ValueError, TypeError
        As :func:`scan_sequential`, and if ``chunk_size`` is not an integer
        >= 1.

    Notes
    -----
    Implements ``eq-scan-chunk``, an instance of ``eq-scan-op``: the chunk
    summary is the combination of the chunk's elements, and step 3 is
    ``(., carry) o (A_local_t, h_local_t)``.  Work ~ 2 L (plus ~ L/T for the
    carry), depth ~ T + L / T with sequential pieces; with a parallel scan
    inside chunks the depth is ~ log T + L / T.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import scan_chunked
    >>> h, states = scan_chunked(np.full(5, 0.5), np.ones(5), chunk_size=2,
    ...                          return_chunk_states=True)
    >>> h
    array([1.    , 1.5   , 1.75  , 1.875 , 1.9375])
    >>> states
    array([1.5   , 1.875 , 1.9375])
    """
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    a, b, h0, out_dtype = _prepare(a, b, h0)
    # [book:scan-chunked]
    L = a.shape[-1]
    lead = a.shape[:-1]
    T = chunk_size
    n_chunks = -(-L // T)  # ceil(L / T)
    Lp = n_chunks * T
    a_p = np.ones(lead + (Lp,), dtype=a.dtype)  # (..., Lp) identity padding
    b_p = np.zeros(lead + (Lp,), dtype=a.dtype)  # (..., Lp)
    a_p[..., :L] = a
    b_p[..., :L] = b
    a_c = a_p.reshape(lead + (n_chunks, T))  # (..., n_chunks, T)
    b_c = b_p.reshape(lead + (n_chunks, T))  # (..., n_chunks, T)

    # 1. scan inside every chunk from zero (all chunks at once)
    h_local = np.empty_like(b_c)  # (..., n_chunks, T)
    A_local = np.empty_like(a_c)  # (..., n_chunks, T)
    state = np.zeros(lead + (n_chunks,), dtype=a.dtype)  # (..., n_chunks)
    prod = np.ones(lead + (n_chunks,), dtype=a.dtype)  # (..., n_chunks)
    for t in range(T):
        state = a_c[..., t] * state + b_c[..., t]
        prod = a_c[..., t] * prod
        h_local[..., t] = state
        A_local[..., t] = prod

    # 2. carry the running prefix across chunks: (., carry) o (A_chunk, B_chunk)
    A_chunk = A_local[..., -1]  # (..., n_chunks)
    B_chunk = h_local[..., -1]  # (..., n_chunks)
    carry_in = np.empty(lead + (n_chunks,), dtype=a.dtype)  # (..., n_chunks)
    chunk_states = np.empty(lead + (n_chunks,), dtype=a.dtype)  # (..., n_chunks)
    carry = h0  # (...)
    for c in range(n_chunks):
        carry_in[..., c] = carry
        carry = A_chunk[..., c] * carry + B_chunk[..., c]
        chunk_states[..., c] = carry

    # 3. apply the carry inside every chunk
    h = h_local + A_local * carry_in[..., None]  # (..., n_chunks, T)
    h = h.reshape(lead + (Lp,))[..., :L]  # (..., L)
    # [/book:scan-chunked]
    h = _finish(h, out_dtype)
    if return_chunk_states:
        return h, _finish(chunk_states, out_dtype)
    return h


# ---------------------------------------------------------------------------
# the log-space (cumulative-sum) form
# ---------------------------------------------------------------------------
def scan_logspace(a, b, h0=None, variant="naive", block_size=64):
    """Solve the recurrence with cumulative sums instead of a scan.

    Unrolling the recurrence gives, with ``P_t = a_0 a_1 ... a_t``,

        h_t = P_t (h0 + sum_{s <= t} b_s / P_s),
        P_t = exp(cumsum(log a)_t)                          (eq-scan-logspace)

    two cumulative sums, which every array library runs in parallel.  The
    catch is range: |log P_t| grows linearly in t.  The running sum
    ``cumsum(b / P)_t = (h_t - P_t h0) / P_t`` overflows to inf as soon as
    ``|log P_t| + log|h_t|`` passes log(max float64) ~ 709.78, and a little
    later ``P_t`` underflows to 0 (0 * inf = nan), although every h_t is
    moderate.  For a = r constant, 0 < r < 1, that is at
    t ~ (709.78 - log|h|) / |log r|: t ~ 1023 for a = 0.5, b = 1; t ~ 440
    for a Mamba channel with delta * A = -1.6; t ~ 700 000 for a = 0.999.

    Parameters
    ----------
    a, b : array_like, shape (..., L)
        Coefficients, real or complex, same shape.
    h0 : array_like, shape (...), optional
        Initial state; zero when not given.
    variant : {"naive", "segsum", "logsumexp"}, default "naive"
        ``"naive"``: the formula above as written.  Complex a and negative a
        go through the complex logarithm (log(-r) = log r + i pi), b of any
        sign or phase is fine.  Fails (non-finite, with a RuntimeWarning)
        once |cumsum(log a)| + log|h| leaves the float range, and for any
        a_t = 0; before that its relative error is ~ eps * |cumsum(log a)|.

        ``"segsum"``: within blocks of ``block_size`` steps, the matrix
        ``M[t, s] = exp(sum_{s < k <= t} log a_k)`` (s <= t) is built from
        sums taken *before* exponentiating, so for |a| <= 1 no entry
        exceeds 1 and nothing overflows; the state is carried from block to
        block.  Handles complex and negative a, a = 0 (log 0 = -inf, exp
        gives 0), b of any sign; costs O(L * block_size).  This is the
        stable "segsum" of Mamba-2 (Dao and Gu, 2024).

        ``"logsumexp"``: stays in the log domain throughout,
        ``log h_t = cumlog_t + logcumsumexp_s(log b_s - cumlog_s)`` with
        ``np.logaddexp.accumulate``; no overflow at any L.  Needs real
        a > 0; the sign of b (and h0) is tracked by splitting them into
        positive and negative parts, h = h(b+) - h(b-), which loses relative
        accuracy where the two parts nearly cancel.  Its relative error
        grows like eps * |cumsum(log a)| (the large log terms cancel).
    block_size : int, default 64
        Block length of the ``"segsum"`` variant.

    Returns
    -------
    h : ndarray, shape (..., L)
        All states, in the input dtype (the real part when real inputs went
        through complex logarithms).

    Raises
    ------
    ValueError, TypeError
        As :func:`scan_sequential`; for an unknown ``variant``; for
        ``"logsumexp"`` with complex inputs or a <= 0.

    Warns
    -----
    RuntimeWarning
        ``"naive"`` only, when the result is not finite although the inputs
        are: the cumulative product left the floating-point range.

    Notes
    -----
    Implements ``eq-scan-logspace`` (and, for ``"segsum"``, the blocked
    form of ``eq-scan-chunk``).  Computed in float64 / complex128.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import scan_logspace
    >>> scan_logspace(np.full(3, 0.5), np.ones(3))
    array([1.  , 1.5 , 1.75])
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     h = scan_logspace(np.full(2000, 0.5), np.ones(2000))
    >>> bool(np.isfinite(h).all())
    False
    >>> h = scan_logspace(np.full(2000, 0.5), np.ones(2000), variant="segsum")
    >>> float(h[-1])
    2.0
    """
    check_choice(variant, "variant", LOGSPACE_VARIANTS)
    block_size = check_positive_int(block_size, "block_size")
    a, b, h0, out_dtype = _prepare(a, b, h0)
    if variant == "logsumexp":
        return _finish(_logspace_logsumexp(a, b, h0), out_dtype)
    # complex logarithm when a can be negative or complex: log(-r) = log r + i pi
    if np.iscomplexobj(a) or np.any(a.real < 0):
        a = a.astype(np.complex128)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_a = np.log(a)  # (..., L); -inf where a == 0
        if variant == "naive":
            h = _logspace_naive(log_a, b, h0)
        else:
            h = _logspace_segsum(log_a, b, h0, block_size)
    if variant == "naive" and not np.all(np.isfinite(h)):
        worst = float(np.max(np.abs(np.cumsum(log_a.real, axis=-1))))
        warnings.warn(
            "scan_logspace(variant='naive') produced non-finite values: "
            f"|cumsum(log a)| reaches {worst:.4g} while exp overflows above "
            f"~{_LOG_MAX:.1f} (minus log|h|), or some a_t = 0; use "
            "variant='segsum' or another scan method",
            RuntimeWarning, stacklevel=2,
        )
    return _finish(h, out_dtype)


def _logspace_naive(log_a, b, h0):
    """h = P (h0 + cumsum(b / P)), P = exp(cumsum(log a)), as written."""
    cumlog = np.cumsum(log_a, axis=-1)  # (..., L) log P_t
    P = np.exp(cumlog)  # (..., L) underflows to 0 for cumlog < -745
    return P * (h0[..., None] + np.cumsum(b / P, axis=-1))  # (..., L)


def _logspace_segsum(log_a, b, h0, T):
    """Blocked log-space form with M[t, s] = exp(sum_{s<k<=t} log a_k)."""
    lead, L = log_a.shape[:-1], log_a.shape[-1]
    n_blocks = -(-L // T)
    Lp = n_blocks * T
    work = np.result_type(log_a, b)
    la = np.zeros(lead + (Lp,), dtype=log_a.dtype)  # (..., Lp) log 1 = 0 pads
    bp = np.zeros(lead + (Lp,), dtype=work)  # (..., Lp)
    la[..., :L] = log_a
    bp[..., :L] = b
    la = la.reshape(lead + (n_blocks, T))  # (..., n_blocks, T)
    bp = bp.reshape(lead + (n_blocks, T))  # (..., n_blocks, T)

    # segsum[t, s] = sum_{s < k <= t} log a_k, summed before exponentiating:
    # X[k, s] = log a_k if k > s else 0, then cumsum over k gives it for t >= s
    strictly_lower = np.tril(np.ones((T, T), dtype=bool), k=-1)  # (T, T) [k, s]
    X = np.where(strictly_lower, la[..., :, None], 0)  # (..., n_blocks, T, T)
    segsum = np.cumsum(X, axis=-2)  # (..., n_blocks, T, T)
    causal = np.tril(np.ones((T, T), dtype=bool))  # (T, T) [t, s], s <= t
    M = np.where(causal, np.exp(segsum), 0)  # (..., n_blocks, T, T)
    h_local = np.einsum("...ts,...s->...t", M, bp)  # (..., n_blocks, T)
    decay_in = np.exp(np.cumsum(la, axis=-1))  # (..., n_blocks, T) prod a_{<=t}

    # carry the state from block to block (as in scan_chunked)
    h = np.empty(lead + (n_blocks, T), dtype=np.result_type(M, bp))
    carry = h0.astype(h.dtype)  # (...)
    for c in range(n_blocks):
        h[..., c, :] = h_local[..., c, :] + decay_in[..., c, :] * carry[..., None]
        carry = h[..., c, -1]
    return h.reshape(lead + (Lp,))[..., :L]  # (..., L)


def _logspace_logsumexp(a, b, h0):
    """log h = cumlog + logcumsumexp(log b - cumlog), signs split off b, h0."""
    if np.iscomplexobj(a) or np.iscomplexobj(b) or np.iscomplexobj(h0):
        raise ValueError(
            "scan_logspace(variant='logsumexp') needs real a, b, h0; got complex "
            "input (use variant='segsum', which handles complex a and b)"
        )
    if np.any(a <= 0):
        raise ValueError(
            f"Parameter a has min value {a.min()!r} but variant='logsumexp' "
            "needs a > 0 (use variant='segsum' for negative or zero a)"
        )
    cumlog = np.cumsum(np.log(a), axis=-1)  # (..., L) log P_t, any size
    parts = []
    for sign in (1.0, -1.0):
        b_part = np.maximum(sign * b, 0.0)  # (..., L) b+ or b-
        h0_part = np.maximum(sign * h0, 0.0)  # (...)
        with np.errstate(divide="ignore"):  # log 0 = -inf is wanted here
            log_terms = np.log(b_part) - cumlog  # (..., L) log(b_s / P_s)
            log_h0 = np.log(h0_part)  # (...)
        log_sum = np.logaddexp.accumulate(log_terms, axis=-1)  # (..., L)
        log_sum = np.logaddexp(log_h0[..., None], log_sum)  # (..., L)
        parts.append(np.exp(cumlog + log_sum))  # (..., L); exp(-inf) = 0
    return parts[0] - parts[1]


# ---------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------
def scan(a, b, h0=None, method="sequential", **options):
    """Solve ``h_t = a_t h_{t-1} + b_t`` with the algorithm named ``method``.

    Parameters
    ----------
    a, b : array_like, shape (..., L)
        Coefficients, real or complex, same shape.
    h0 : array_like, shape (...), optional
        Initial state.
    method : {"sequential", "hillis_steele", "blelloch", "chunked", "logspace"}
        The algorithm; see :data:`SCAN_METHODS`.
    **options
        Passed on to the chosen function (``return_stats``, ``chunk_size``,
        ``return_chunk_states``, ``variant``, ``block_size``).

    Returns
    -------
    h : ndarray, shape (..., L)
        What the chosen function returns.

    Raises
    ------
    ValueError
        For an unknown ``method`` and for the errors of the chosen function.
    TypeError
        For an option the chosen function does not take.

    Notes
    -----
    Every method computes ``eq-scan-recurrence``; they differ in work,
    depth and numerical range (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import scan
    >>> scan(np.full(3, 0.5), np.ones(3), method="blelloch")
    array([1.  , 1.5 , 1.75])
    """
    check_choice(method, "method", SCAN_METHODS)
    function = {
        "sequential": scan_sequential,
        "hillis_steele": scan_hillis_steele,
        "blelloch": scan_blelloch,
        "chunked": scan_chunked,
        "logspace": scan_logspace,
    }[method]
    return function(a, b, h0, **options)
