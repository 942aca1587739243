"""The hidden attention matrix of a selective SSM (Ali, Zimerman and Wolf, 2024).

Glossary
--------
======  ================================================================
B       batch size
L       sequence length; i indexes outputs (queries), j inputs (keys)
D       channels (every channel has its own L x L matrix)
N       state size per channel
G       groups of B/C (as in :func:`ssm_ref.selective_scan`)
delta   step size Δ, (B, D, L)
A       (D, N) diagonal state matrices; B, C the projections of the scan
alpha   (B, D, L, L) hidden attention, lower triangular in (i, j)
======  ================================================================

Unrolling the recurrence ``h_i = Abar_i h_{i-1} + Bbar_i u_i`` (with
``h_{-1} = 0``) writes each output as a weighted sum of the inputs::

    y_i = sum_{j <= i} alpha[i, j] u_j,
    alpha[i, j] = C_i^T (prod_{k=j+1..i} Abar_k) Bbar_j

so a selective SSM is a causal, data-dependent "attention" whose matrix is
never formed in the scan.  Forming it (O(L^2 N) per channel) is an analysis
tool: heatmaps, attribution, comparing scan orders.
"""
from __future__ import annotations

import numpy as np

from .scan_args import check_scan_args

__all__ = ["hidden_attention"]


def hidden_attention(delta, A, B, C, delta_bias=None, delta_softplus=False):
    """Hidden attention matrices alpha (B, D, L, L) of a selective scan.

    Parameters
    ----------
    delta : array_like, shape (B, D, L)
        Step sizes before ``delta_bias`` and softplus; its dtype is the
        dtype of the result.
    A : array_like, shape (D, N)
        Diagonal state matrices, real or complex, ``Re(A) <= 0``.
    B, C : array_like
        Constant (D, N), variable (B, N, L) or grouped (B, G, N, L), as in
        :func:`ssm_ref.selective_scan`.
    delta_bias : array_like, shape (D,), optional
        Added to ``delta`` before the softplus.
    delta_softplus : bool, default False
        Apply softplus (linear above 20) to ``delta + delta_bias``.

    Returns
    -------
    alpha : ndarray, shape (B, D, L, L)
        ``alpha[b, d, i, j]`` is the weight of input ``u[b, d, j]`` in output
        ``y[b, d, i]``; zero for ``j > i`` (causal).

    Raises
    ------
    ValueError, TypeError
        As :func:`ssm_ref.selective_scan` for the same arguments.

    Notes
    -----
    Implements ``eq-hidden-attention`` of the book::

        alpha[i, j] = C_i^T (prod_{k=j+1..i} Abar_k) Bbar_j   for j <= i, 0 above

    with ``Abar_k = exp(delta_k A)`` and ``Bbar_j = delta_j B_j`` (Mamba's
    discretization), and ``2 Re`` for complex A.  Then
    ``y = alpha @ u`` equals ``selective_scan(u, delta, A, B, C, ...)`` with
    no ``D``, no ``z`` and a zero initial state.  The skip ``D`` would add
    ``D`` on the diagonal; the gate ``silu(z)`` scales row i.

    The loop runs over outputs i and keeps ``M[j] = (prod_{k=j+1..i} Abar_k)
    Bbar_j``, the part of the state h_i contributed by token j: each step
    multiplies every part by ``Abar_i`` and adds ``Bbar_i`` as the new part,
    exactly the recurrence with the state split by source token.  Cost
    O(B D L^2 N), memory O(B D L N) besides the result; computed in float64
    (complex128 for complex A).

    References
    ----------
    A. Ali, I. Zimerman and L. Wolf, "The Hidden Attention of Mamba Models",
    2024, arXiv:2403.01590.

    Examples
    --------
    One state, A = -1, delta = 0.5, B = C = 1: alpha[i, j] = 0.5 e^{-0.5 (i - j)}.

    >>> import numpy as np
    >>> from ssm_ref import hidden_attention
    >>> hidden_attention(0.5 * np.ones((1, 1, 3)), [[-1.0]], [[1.0]], [[1.0]])[0, 0]
    array([[0.5       , 0.        , 0.        ],
           [0.30326533, 0.5       , 0.        ],
           [0.18393972, 0.30326533, 0.5       ]])
    """
    s = check_scan_args(None, delta, A, B, C, None, None, delta_bias, delta_softplus, None,
                        u_optional=True)
    batch, dim, length, dstate = s.batch, s.dim, s.length, s.dstate
    # [book:hidden-attention]
    step, Am = s.step, s.A  # (B, D, L), (D, N)
    Bt = np.moveaxis(s.form_B.per_channel(s.B, dim), 3, 2)  # (B|1, D|1, L|1, N)
    Ct = np.moveaxis(s.form_C.per_channel(s.C, dim), 3, 2)  # (B|1, D|1, L|1, N)
    Ct = np.broadcast_to(Ct, Ct.shape[:2] + (length, dstate))  # (B|1, D|1, L, N)
    Abar = np.exp(step[..., None] * Am[None, :, None, :])  # (B, D, L, N)
    Bbar = step[..., None] * Bt  # (B, D, L, N)

    alpha = np.zeros((batch, dim, length, length))  # (B, D, L, L)
    M = np.zeros((batch, dim, length, dstate), dtype=Abar.dtype)  # (B, D, L_j, N)
    for i in range(length):
        M = Abar[:, :, i, None, :] * M  # every earlier token's part decays by Abar_i
        M[:, :, i] = Bbar[:, :, i]  # token i enters the state
        C_i = Ct[:, :, i]  # (B|1, D|1, N)
        row = np.sum(C_i[:, :, None, :] * M[:, :, : i + 1], axis=-1)  # (B, D, i + 1)
        alpha[:, :, i, : i + 1] = 2.0 * row.real if s.is_complex else row.real
    # [/book:hidden-attention]
    return alpha.astype(s.out_dtype)
