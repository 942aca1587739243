"""fast: compiled fast paths with the reference's signatures.

==================  ===========================================================
module              what it holds
==================  ===========================================================
_registry           the backends ("ref", "numba", "cuda", "auto") and the
                    public functions below, which dispatch to them
numba_cpu           the selective scan, its backward and the decoding step
                    (selective_state_update in place, selective_state_step
                    functional) on the CPU (Numba, parallel over batch x
                    channel); safe to
                    call from several threads (under Numba's "workqueue"
                    threading layer its parallel launches take a lock)
numba_pairs         numba_cpu's scan kernels for N <= 8: two channels that share
                    B and C in one 16-lane block (used by numba_cpu itself)
numba_fused         the Mamba block's fused pieces on the CPU: causal conv1d +
                    SiLU and the inner function (conv -> x_proj -> dt_proj ->
                    scan -> gate), forward and backward; SS2D's depthwise
                    conv2d + SiLU
numba_norms         LayerNorm and RMSNorm (the reference's signatures),
                    SS2D's out_norm + gate fused and PlainMamba's gate,
                    forward and backward
numba_cross         VMamba's cross-scan (its directions' gathers) and
                    cross-merge (their adjoint)
numba_projections   SS2D's per-direction products and the inner path's x_proj,
                    dt_proj, one batch element at a time on all cores
numba_linear        the mixers' in- and out-projections: blocks of tokens or,
                    channels first, batch elements on all cores
numba_bidirectional Vim's merge of its two paths, scale * (y_f + flip(y_b)),
                    and its backward, one pass each
_fastexp            an exp that LLVM vectorizes (the CPU scan's inner loop)
_launch             the one lock every parallel Numba kernel is launched through
                    (thread safety under the "workqueue" layer)
cuda_scan           the hardware-aware selective scan in Numba-CUDA on CuPy
                    arrays (imported only when the "cuda" backend is used)
bench               the benchmarks (bench.scan, bench.train; ``python -m
                    fast.bench.scan``, ``ssm-ref bench``), never imported by
                    ``import fast``
==================  ===========================================================

Usage: ``fast.selective_scan(u, delta, A, B, C, ..., backend="auto")`` with
exactly the arguments of :func:`ssm_ref.selective_scan`; ``fast.backends()``
says what can run here.  An unavailable backend raises, never falls back.
``import fast`` imports neither Numba nor ``numba.cuda``.
"""
from ._registry import (  # noqa: F401
    BACKENDS,
    backends,
    selective_scan,
    selective_scan_backward,
    selective_state_step,
    selective_state_update,
    causal_conv1d,
    causal_conv1d_backward,
    mamba_inner_fn,
    mamba_inner_fn_backward,
    scan_functions,
    attach_inner_path,
)

__all__ = ["BACKENDS", "backends", "selective_scan", "selective_scan_backward",
           "selective_state_update", "selective_state_step", "causal_conv1d",
           "causal_conv1d_backward", "mamba_inner_fn", "mamba_inner_fn_backward", "scan_functions",
           "attach_inner_path"]
