"""The selective scan on the CPU with Numba: forward, backward, decoding step.

Glossary
--------
======  ================================================================
B       batch size (the *matrix* B is written ``Bx`` inside kernels)
L       sequence length
D       channels (the *skip vector* D is written ``Dv`` inside kernels)
N       state size per channel
G       number of groups sharing one input-dependent B (or C)
delta   step size Δ (B, D, L); ``dt`` is one row of it after bias/softplus
A       (D, N) diagonal state matrices
B, C    input / output projections, constant (D, N), variable (B, N, L) or
        grouped (B, G, N, L); inside the kernels all three are laid out as
        ``(B or 1, G', L or 1, N)`` so that the loop over N reads contiguous
        memory (G' = D for the constant form, 1 for the variable form)
h       (N,) the state of one (batch, channel) row
row     one (batch, channel) pair: the unit of parallel work
======  ================================================================

Same signatures and semantics as :mod:`ssm_ref.selective` (which mirrors
the official ``selective_scan_ref`` of state-spaces/mamba); the docstrings
there are the specification, this module says only how it is computed.

How it is computed
------------------
* Parallel over the B·D rows (``numba.prange``); each row runs the whole
  recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t with its state in a
  length-N scratch array, so nothing of size (B, D, L, N) is ever allocated.
* The loop over (a block of 16 of) the state dimension N is innermost,
  contiguous and branch-free, inside the loop over time, so that the block's
  state stays in vector registers for the whole row.  Its exponential is
  ``2^(Δ A log2 e)`` (A is scaled once per row) by
  :func:`fast._fastexp.fast_exp2_scan`, or :func:`fast._fastexp.fast_exp2_normal`
  (no clamp) for a row whose arguments are all >= -125, which LLVM vectorizes
  (the C library's ``exp`` would not vectorize and caps the scan near 0.5 G
  state updates per second per core); chapter 11 counts the instructions per
  update against the machine's limit.  In float32 the loop over time runs
  16 steps per pass after the row's first L mod 16 (:mod:`fast._row_sweep`,
  LLVM IR), so that the outputs y_t = <C_t, h_t> are summed across the lanes
  16 at a time.  The per-time-step
  work (bias, softplus, Δ·u, the D skip and the SiLU gate) is done in separate
  loops over L before and after the recurrence, also vectorized.  Three
  more things were needed for LLVM to vectorize well (each measured, see
  the comments at ``_LANES``, ``_FMK`` and ``_njit_noalias``): N padded to
  blocks of exactly 16 lanes with an unsigned index, ``error_model="numpy"``
  (no ZeroDivisionError branch), and ``noalias`` array arguments (no
  run-time overlap checks in front of every 16-lane loop); a fourth, that
  those loops get 512-bit vectors on Intel's AVX-512 cores too, whose LLVM
  tuning prefers 256 bits, is at ``_WideCodegen``.  The
  exponential's constants come in as a kernel argument
  (:func:`fast._fastexp.exp2_terms`), so that LLVM keeps them in registers
  instead of reloading them at every step.
* Precision: float32 input is computed in float32 (state, exponentials and
  the dot product with C), and so are float16 and ``ml_dtypes.bfloat16``
  (converted on the way in, results cast back); anything else in float64.  The float32 result
  stays within the ``"backend"`` float32 tolerance of the float64 reference
  (rtol 2e-4, atol 2e-5) on the test sizes; the error grows slowly with L
  (each step adds about one float32 rounding to a state that forgets at rate
  exp(Δ A)).  Where float32 cannot hold what float64 can (an argument given
  in float64 beyond float32's range, such as ``delta = 1e300``, or an
  intermediate ``Δ·u`` that overflows while the result fits), the call is
  computed again in float64, as the reference computes it: the kernels' screen
  (below) sums the outputs, the last state and the gradients per row, so an
  overflow is seen without an extra pass.  Complex A is computed in complex128
  whatever the input dtype (a scalar ``cmath.exp`` loop, not tuned).  Rows
  whose B and C exceed ``_FWD_BC_BYTES`` run in time blocks, the loop over
  blocks outside the loop over the thread's rows, each row's state carried
  from block to block, so that a block's B and C stay in cache.
* N <= 8 (the tiny vision models): two rows that read the same B and C
  share one 16-lane block (:mod:`fast.numba_pairs`), instead of each
  padding its 8 states to 16 lanes.
* float32 channels that share B and C (variable or grouped form, at least
  16 channels per group: Mamba's case) run 16 channels per vector instead
  of 16 states (:mod:`fast.numba_tiles`): no sum across the lanes at each
  step.  The forward always (long rows in time blocks, as the rows'); the
  backward while its records fit in about a level-2 cache (L N <= 4096).
* Backward: each row runs its forward again, keeping its decay factors
  Abar_t and the products Abar_t h_{t-1} (two (L, N) scratch arrays per
  thread), then the reverse scan of the reference.  That forward sweep is
  written in LLVM IR (:mod:`fast._row_sweep`) after its first L mod 16
  steps: it sums the outputs y_t = <C_t, h_t> 16 steps at a time, one
  shuffle network for 16 sums across the lanes instead of one sum per step.
  Both sweeps run one block of 16 states after the other, on B, C, dB and dC
  laid out in blocks of 16 states ((N / 16, L, 16), ``_blocks_of_16``), so
  that a block's sweeps stream contiguous memory and the reverse sweep reads
  the records of one block (2 L vectors) while they are in cache.  Rows
  longer than T steps (records beyond ``_BWD_RECORD_BYTES`` per thread; except
  on AMD's Zen, also a block's working set beyond three quarters of the
  level-2 cache, ``_BWD_CACHE_BYTES``) run in blocks of T steps with the
  loop over blocks outside the loop over the thread's rows, so that a
  block's B, C, dB and dC stay in cache: a first
  pass carries each row's state alone through the blocks and saves it at
  every block's start, and the second runs the blocks from the last, each
  as a row of its own from its saved state.  Never
  (B, D, L, N).  Gradients of B and
  C are summed over the channels that share them, so each thread adds into
  its own copy of dB, dC, dA, dD and d delta_bias, and the copies are summed
  at the end (no races, no atomics).
* Validation: the reference's own checks, in the same order
  (:func:`ssm_ref.scan_args.check_scan_structure`, whose
  :class:`~ssm_ref.scan_args.ScanArgs` the layout reads).  Checks over the
  big (B, D, L) arrays (finiteness) are folded into the kernels as a per-row
  sum, and negative steps are screened by ``min(delta) + min(delta_bias)``;
  when a screen trips, the reference validator is called so that the error
  raised is exactly the reference's (and if the input is valid, float32
  overflowed: the call runs again in float64).

Kernels are compiled once per dtype and cached on disk (``cache=True``).

Threads
-------
The three public functions may be called from several Python threads at
once under every Numba threading layer.  Numba's ``workqueue`` layer (the
one Numba falls back to when neither TBB nor OpenMP is installed) is not
thread-safe: two parallel launches at the same time abort the process
("Concurrent access has been detected").  So every parallel kernel is
launched through :func:`fast._launch.launch`, which serialises the launches
with one process-wide lock while the layer is ``workqueue``.  The layer is known
only after the first parallel launch (``numba.threading_layer()`` raises
before), so launches are serialised until then and, under ``omp`` or
``tbb`` (both thread-safe), never again.  Under ``workqueue`` the calls of
several threads therefore run one kernel at a time (each kernel still
uses all of Numba's threads); the Python parts (validation, layout) still
overlap.  The same lock covers the package's other parallel kernels
(:func:`fast._fastexp.exp_array`, the benchmark kernels of :mod:`fast.bench`).
"""
from __future__ import annotations

import cmath
import functools
from pathlib import Path

import llvmlite.binding as _llvm
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import codegen as _numba_codegen
from numba.core import cpu as _numba_cpu
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import CPUDispatcher, CPUTarget, cpu_target
from numba.extending import overload

import ssm_ref
from ssm_ref._validation import as_array, check_bool, check_finite, check_shape
from ssm_ref.scan_args import check_scan_args, check_scan_structure, check_step_args
from ssm_ref.selective import write_state

from ._fastexp import (_fma, exp2_terms, fast_exp2_normal, fast_exp2_scan, fast_exp_clamped,
                       fast_sigmoid, fast_softplus, fast_softplus_grad)
from ._launch import launch
from ._row_sweep import row_scan_clamped, row_scan_normal, row_sweep_clamped, row_sweep_normal

__all__ = ["selective_scan", "selective_scan_backward", "selective_state_update",
           "selective_state_step", "selective_scan_for_backward",
           "selective_scan_backward_saved", "SavedScan", "attach_saved_scan"]

#: fastmath flags of the kernels: FMA contraction and reassociation (so the
#: dot product over N vectorizes), but no "no NaN / no inf" assumptions.
#: Every kernel also uses ``error_model="numpy"``: with Python's error model
#: each float division carries a ZeroDivisionError check, and that branch
#: alone keeps LLVM from vectorizing the sigmoid and softplus loops (measured
#: 0.1 G/s instead of 2-5 G/s).
_FMK = {"contract", "reassoc", "nsz", "arcp"}

#: the real scan kernels pad N to a multiple of this and run the loop over N
#: in blocks of exactly this many lanes (a compile-time trip count: one
#: AVX-512 float32 vector, two float64 ones).  With a run-time trip count,
#: LLVM vectorizes by 16 lanes x 4 unrolled and N = 16 would run entirely in
#: the remainder loop.  The index inside a block is made unsigned: a signed
#: computed index gets Numba's negative-index wraparound select, which LLVM
#: can only vectorize as a gather (about 6x slower, measured).  Padded
#: entries have A = B = C = h0 = 0, so they stay 0 and add nothing.
_LANES = 16

#: per-thread scratch rows are padded by this many elements (256 bytes or
#: more), so that two threads never write into one cache line (false sharing
#: made the two-thread backward pass slower than one thread, measured)
_GAP = 64

#: log2(e): the real kernels scale A by it once per row, so that their exponential is
#: the cheaper ``2^x`` of :func:`fast._fastexp.fast_exp2_scan`
_LOG2E = 1.4426950408889634

#: the exps of a row whose arguments ``dt * A * log2(e)`` are all >= this are normal
#: numbers: :func:`_all_normal`
_NORMAL_LOW = -125.0

#: the backward pass of a row keeps two records per step (Abar_t, Abar_t h_{t-1}): rows of
#: up to T steps, with T such that the records fill at most this many bytes per thread
#: (T = 16384 at N = 16 in float32), run row by row in _bwd_real, nothing recomputed;
#: longer rows run in blocks of T steps with all of a thread's rows passing through one
#: block before the next (_bwd_real_long), so that the block's B, C, dB and dC stay in
#: cache, at the price of a first pass that carries each row's state through the blocks
#: (one more exponential per update; none after a forward that kept those states,
#: :func:`selective_scan_for_backward`).  Measured (chapter 11) on AMD's Zen 4: records of
#: 2 MB per thread read back from the level-3 cache cost less than that pass; B, C, dB and
#: dC rows of 4 MB each, as at L = 65536, do not.  (The records of one block of 16 states
#: are a quarter of that at N = 64: the sweeps run block by block, _bwd_row_sweeps.)
_BWD_RECORD_BYTES = 2 * 1024 * 1024

#: where Linux describes the CPU's caches (one folder per cache of cpu0)
_CACHE_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")


def _level2_cache_bytes(root=None):
    """One core's level-2 cache in bytes, as Linux's sysfs gives it (under ``root``,
    :data:`_CACHE_SYSFS` by default); None where it cannot be read (another OS)."""
    units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
    try:
        for index in sorted(Path(root or _CACHE_SYSFS).glob("index*")):
            kind = (index / "type").read_text().strip()
            if (index / "level").read_text().strip() == "2" and kind in ("Unified", "Data"):
                size = (index / "size").read_text().strip()  # "2048K", "1M"
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        return None
    return None


def _default_cache_cap(cpu_name, level2):
    """:data:`_BWD_CACHE_BYTES` for a CPU of LLVM's name ``cpu_name`` with ``level2`` bytes
    of level-2 cache per core (None: unknown)."""
    if cpu_name.startswith("znver") or not level2:
        return None
    return 3 * level2 // 4


#: where reading a block back from the level-3 cache costs more than on Zen 4, a time
#: block must fit a core's level-2 cache instead.  Measured on an Intel Xeon (2 MB of L2
#: per core; chapter 11, "Throughput against L and N"): at N = 16, blocks of T = 4096
#: steps ran the backward 1.35-1.75 times as fast as T = 16384 at L = 16384 and 65536.
#: So except on AMD's Zen CPUs (LLVM's "znver"), T is also capped so that a thread's
#: working set in one block (the records of one block of 16 states and the row's B, C,
#: dB and dC) fills at most this many bytes, three quarters of the level-2 cache
#: (:func:`_level2_cache_bytes`); None: no cap (Zen, or the cache size is unknown).
_BWD_CACHE_BYTES = _default_cache_cap(_llvm.get_host_cpu_name(), _level2_cache_bytes())

#: the forward pass streams, for every channel, its rows of B and C: 2 (L, N) arrays.
#: Up to this many bytes of them per row it runs row by row (_fwd_real); longer rows run
#: in time blocks of T steps with the B and C of this many bytes, all of a thread's
#: rows passing through one block before the next (_fwd_real_long), so that the block's
#: B and C stay in cache.  Measured (chapter 11): at N = 64, L = 65536 float32 (B and C
#: 16 MB each, beyond the 32 MB level-3 cache together) the row-by-row forward fell to
#: 0.9-2.4 G updates/s against 5 at L = 16384.
_FWD_BC_BYTES = 2 * 1024 * 1024


# ---------------------------------------------------------------------------
# parallel launches from several Python threads (see "Threads" above)
# ---------------------------------------------------------------------------

# the one lock of every parallel launch of the package (fast._launch)
_launch = launch


# ---------------------------------------------------------------------------
# a Numba decorator that marks array arguments "noalias" (C's restrict)
# ---------------------------------------------------------------------------
# The loop over N is short (16 lanes).  LLVM vectorizes it, but unless it can
# prove that the arrays written in the loop (the state, the backward pass's
# per-step records, dB, dC) do not overlap the arrays read, it guards every
# entry of the vector loop with run-time overlap checks, one per pair of
# arrays, and with 16 lanes the checks cost more than the work: measured
# 1.0 G/s with the checks and 2.7 G/s without, on the backward pass's loop.
# Numba has a compiler flag for this (``Flags.noalias``, which marks every
# pointer argument ``noalias``; its parfors set it on a parallel loop body
# whose arguments cannot alias) but no decorator option, so this dispatcher
# sets it.  It is safe here because every array a kernel writes is allocated
# by the caller in this module and is distinct from every other argument
# (inputs that alias each other are only read, which ``noalias`` allows).
# Scratch arrays are allocated outside the ``prange`` loop, so that they
# reach the parallel loop body as (noalias) arguments too.

class _NoAliasOptions(_numba_cpu.CPUTargetOptions):
    def finalize(self, flags, options):
        super().finalize(flags, options)
        flags.noalias = True


class _NoAliasTarget(CPUTarget):
    """The CPU target with ``noalias`` set, sharing Numba's CPU contexts."""
    options = _NoAliasOptions

    @property
    def target_context(self):
        return cpu_target.target_context

    @property
    def typing_context(self):
        return cpu_target.typing_context


# The same kernels are compiled with 512-bit vectors on every AVX-512 CPU.  LLVM vectorizes
# the loops over 16 lanes itself, at the vector width that its tuning for the CPU prefers.
# For AMD's Zen 4 that is 512 bits; for Intel's AVX-512 cores (Skylake-SP to Sapphire
# Rapids, and the "rocketlake" that a virtual machine may report) the tuning carries
# "prefer-256-bit" (early AVX-512 parts lowered their clock for 512-bit work), so those
# loops ran as pairs of 256-bit vectors while the LLVM IR sweeps (fast._row_sweep) and
# this project's measurements used 512 (chapter 11, "Deep dive: five compiler lessons",
# has the gain on an Intel Xeon).  Numba's target context has to be shared (lowering
# implementations register with it), so the kernels' dispatcher lends it a code generator
# of its own (its own target machine and JIT engine) while it compiles, under Numba's
# compiler lock.  What compiles meanwhile (a Numba function that a kernel calls, the first
# time) gets it too; everything else keeps Numba's defaults.

class _WideCodegen(_numba_codegen.JITCPUCodegen):
    """Numba's JIT code generator, with LLVM's preference for 256-bit vectors lifted where the
    CPU has 512-bit ones (AVX-512)."""

    def _customize_tm_features(self):
        features = super()._customize_tm_features()
        if "+avx512f" in features.split(","):
            features += ",-prefer-256-bit"
        return features


@functools.cache
def _wide_codegen():
    """The one :class:`_WideCodegen` of the process (made on the first compilation)."""
    return _WideCodegen("numba.exec.ssm_ref_kernels")


class _NoAliasDispatcher(CPUDispatcher):
    """Numba's CPU dispatcher with :class:`_NoAliasTarget`, compiling with
    :func:`_wide_codegen`."""
    targetdescr = _NoAliasTarget("cpu")

    @global_compiler_lock
    def compile(self, sig):
        # what compiles inside (and Numba's cache, whose index names the code generator's
        # CPU and features) sees the wide code generator; afterwards, Numba's again
        context = self.targetdescr.target_context
        saved = context._internal_codegen
        context._internal_codegen = _wide_codegen()
        try:
            return super().compile(sig)
        finally:
            context._internal_codegen = saved


def _njit_noalias(**options):
    """``numba.njit(**options)`` whose array arguments are ``noalias``, compiled with 512-bit
    vectors where the CPU has them (:class:`_WideCodegen`)."""
    cache = options.pop("cache", False)

    def decorate(func):
        dispatcher = _NoAliasDispatcher(func, targetoptions=dict(nopython=True, **options))
        if cache:
            dispatcher.enable_caching()
        return dispatcher
    return decorate


# ---------------------------------------------------------------------------
# per-row helpers (inlined into the kernels by LLVM)
# ---------------------------------------------------------------------------

@njit(cache=True)
def _bc_strides(Bx, Cx, nd):
    """How row (b, d) reads B and C in their (Bb, G, Lb, N) layouts, as 6 ints.

    For B then C: the batch stride (0: shared by the batch), the time stride
    (0: constant in time) and the channels per group; the row reads
    ``Bx[b * b_sb, d // b_gd, t * b_st]``.
    """
    return (1 if Bx.shape[0] > 1 else 0, 1 if Bx.shape[-2] > 1 else 0, nd // Bx.shape[1],
            1 if Cx.shape[0] > 1 else 0, 1 if Cx.shape[-2] > 1 else 0, nd // Cx.shape[1])


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd):
    """Row (b, d)'s batch and group indices into B and C: ``(bb, bg, cb, cg)``."""
    return b * b_sb, d // b_gd, b * c_sb, d // c_gd


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _time_slice(X_row, t0, tn, st):
    """Steps t0 .. t0 + tn - 1 of a (Lb, N) row of B, C, dB or dC (one entry if ``st`` = 0)."""
    return X_row[t0 * st:t0 * st + (tn - 1) * st + 1]


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _row_start(A, h0, b, d, has_h0, zero, a, h):
    """Row (b, d)'s poles ``a = A[d]`` and initial state ``h = h0[b, d]`` (zeros without h0)."""
    for n in range(A.shape[1]):
        a[n] = A[d, n]
        h[n] = h0[b, d, n] if has_h0 else zero


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per row
def _row_steps(delta_row, u_row, bias_d, softplus, dt, bu, z_row, has_z):
    """dt = softplus(delta + bias), bu = dt * u; returns the sum of the inputs and steps.

    The sum is a screen: it is not finite if an input is NaN or inf, or if a
    step overflowed (an ``exp(dt * A)`` of an infinite step would be meaningless).
    """
    s = u_row[0] - u_row[0]  # typed zero
    if softplus:  # one pass over the row, in two copies: no branch inside the loop
        for t in range(delta_row.size):
            x = fast_softplus(delta_row[t] + bias_d)
            dt[t] = x
            bu[t] = x * u_row[t]
            s += u_row[t] + delta_row[t] + x
    else:
        for t in range(delta_row.size):
            x = delta_row[t] + bias_d
            dt[t] = x
            bu[t] = x * u_row[t]
            s += u_row[t] + delta_row[t] + x
    if has_z:
        for t in range(delta_row.size):
            s += z_row[t]
    return s


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per row
def _row_output(y, u_row, Dd, has_D, z_row, has_z, out_row):
    """out = (y + D u) * silu(z), each part optional (length: that of ``out_row``).

    Returns the sum of ``out_row``: a screen, not finite if an output is not.  Each of
    the four combinations of ``has_D`` and ``has_z`` is a loop of its own
    (:func:`_output_loop` with constant flags), as in :func:`_row_prep` and
    :func:`_row_grads`: with the flags tested inside one loop, LLVM turned the tests into
    masked loads and stores (``vmaskmovps``), which cost those two loops a third of their
    time on AVX2 (chapter 11, "A CPU without AVX-512"; this loop's time did not change).
    """
    if has_D:
        if has_z:
            return _output_loop(y, u_row, Dd, True, z_row, True, out_row)
        return _output_loop(y, u_row, Dd, True, z_row, False, out_row)
    if has_z:
        return _output_loop(y, u_row, Dd, False, z_row, True, out_row)
    return _output_loop(y, u_row, Dd, False, z_row, False, out_row)


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # `has_*`: constants
def _output_loop(y, u_row, Dd, has_D, z_row, has_z, out_row):
    """:func:`_row_output`'s loop for one combination of its flags."""
    s = u_row[0] - u_row[0]  # typed zero
    for t in range(out_row.size):
        v = y[t]
        if has_D:
            v += Dd * u_row[t]
        if has_z:
            zz = z_row[t]
            v = v * zz * fast_sigmoid(zz)
        out_row[t] = v
        s += v
    return s


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per row
def _row_prep(delta_row, u_row, bias_d, softplus, dout_row, z_row, has_z, dt, bu, dsp, sz, dy,
              zero):
    """The backward's pass over a row before its sweeps, one loop over the steps.

    Writes dt = softplus(delta + bias) and bu = dt u (as :func:`_row_steps`), the
    derivative d dt / d(delta + bias) into ``dsp`` (1 without ``softplus``; with it,
    from the same exponential: :func:`fast._fastexp.fast_softplus_grad`), with ``has_z``
    sigmoid(z) into ``sz``, and dy = dout silu(z) (dout without z), the gradient
    reaching y_t.  Returns the screen sum of u, delta, dt, z and dout, and the sum of
    dy u (the row's dD).  One loop per combination of ``softplus`` and ``has_z``
    (:func:`_prep_loop` with constant flags), as :func:`_row_output`.
    """
    if softplus:
        if has_z:
            return _prep_loop(delta_row, u_row, bias_d, True, dout_row, z_row, True, dt, bu,
                              dsp, sz, dy, zero)
        return _prep_loop(delta_row, u_row, bias_d, True, dout_row, z_row, False, dt, bu, dsp,
                          sz, dy, zero)
    if has_z:
        return _prep_loop(delta_row, u_row, bias_d, False, dout_row, z_row, True, dt, bu, dsp,
                          sz, dy, zero)
    return _prep_loop(delta_row, u_row, bias_d, False, dout_row, z_row, False, dt, bu, dsp, sz,
                      dy, zero)


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # flags: constants
def _prep_loop(delta_row, u_row, bias_d, softplus, dout_row, z_row, has_z, dt, bu, dsp, sz, dy,
               zero):
    """:func:`_row_prep`'s loop for one combination of its flags."""
    s = zero
    sD = zero
    one = zero + 1
    for t in range(dout_row.size):
        raw = delta_row[t] + bias_d
        if softplus:
            x, gx = fast_softplus_grad(raw)
        else:
            x, gx = raw, one
        dsp[t] = gx
        uu = u_row[t]
        dt[t] = x
        bu[t] = x * uu
        g = dout_row[t]
        s += uu + delta_row[t] + x + g
        if has_z:
            zz = z_row[t]
            sg = fast_sigmoid(zz)
            sz[t] = sg
            s += zz
            g = g * zz * sg
        dy[t] = g
        sD += g * uu
    return s, sD


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per row
def _row_dz(dout_row, z_row, sz, y, u_row, Dd, dz_row, one):
    """dz = dout * (y + D u) * silu'(z), with ``sz`` = sigmoid(z); returns the sum of dz."""
    s = one - one
    for t in range(dz_row.size):
        zz = z_row[t]
        sg = sz[t]
        v = y[t] + Dd * u_row[t]
        dz_row[t] = dout_row[t] * v * sg * (one + zz * (one - sg))
        s += dz_row[t]
    return s


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per row
def _row_grads(dt, pA, pB, dy, dsp, u_row, Dd, du_row, ddelta_row, with_dz, dout_row, z_row, sz,
               y, dz_row, one):
    """The backward's pass over a row after its sweeps, one loop over the steps.

    From the reverse sweep's per-step sums ``pA`` and ``pB``: du_t = dt_t pB_t + D dy_t
    and d delta_t = (pA_t + u_t pB_t) ``dsp_t`` (:func:`_row_prep`'s derivative of the
    step); with ``with_dz`` also dz (as :func:`_row_dz`, ``y`` the row's output before
    D u).  Returns the screen sum of du, d delta before the derivative and dz, and the
    sum of d delta (the row's d delta_bias).
    """
    if with_dz:  # two loops, as _row_output's
        return _grads_loop(dt, pA, pB, dy, dsp, u_row, Dd, du_row, ddelta_row, True, dout_row,
                           z_row, sz, y, dz_row, one)
    return _grads_loop(dt, pA, pB, dy, dsp, u_row, Dd, du_row, ddelta_row, False, dout_row,
                       z_row, sz, y, dz_row, one)


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # `with_dz`: a constant
def _grads_loop(dt, pA, pB, dy, dsp, u_row, Dd, du_row, ddelta_row, with_dz, dout_row, z_row,
                sz, y, dz_row, one):
    """:func:`_row_grads`'s loop for one value of ``with_dz``."""
    s = one - one
    sb = s
    for t in range(du_row.size):
        uu = u_row[t]
        g = dt[t] * pB[t] + Dd * dy[t]
        du_row[t] = g
        gd = pA[t] + uu * pB[t]
        s += g + gd
        gd = gd * dsp[t]
        ddelta_row[t] = gd
        sb += gd
        if with_dz:  # as _row_dz
            sg = sz[t]
            g = dout_row[t] * (y[t] + Dd * uu) * sg * (one + z_row[t] * (one - sg))
            dz_row[t] = g
            s += g
    return s, sb


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per row
def _row_dy(dout_row, z_row, u_row, has_z, sz, dy, zero):
    """dy = dout * silu(z) (dout without z), the gradient reaching y_t; sigmoid(z) into ``sz``.

    Returns the sum of ``dout_row`` (a screen) and that of dy * u (the row's dD).
    With :func:`_row_steps` before the sweeps and :func:`_row_dz` and
    :func:`_row_input_grads` after them, the tile kernel's per-row passes
    (``fast.numba_tiles.bwd_tiles``): there the fused :func:`_row_prep` and
    :func:`_row_grads` were no faster at VMamba's size and 3-8% slower at tiny Vim's
    (``benchmarks/compare_revisions.py``).  One loop per value of ``has_z``
    (:func:`_dy_loop` with a constant flag), as :func:`_row_output`.
    """
    if has_z:
        return _dy_loop(dout_row, z_row, u_row, True, sz, dy, zero)
    return _dy_loop(dout_row, z_row, u_row, False, sz, dy, zero)


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # `has_z`: a constant
def _dy_loop(dout_row, z_row, u_row, has_z, sz, dy, zero):
    """:func:`_row_dy`'s loop for one value of ``has_z``."""
    s = zero
    sD = zero
    for t in range(dout_row.size):
        g = dout_row[t]
        s += g
        if has_z:
            zz = z_row[t]
            sg = fast_sigmoid(zz)
            sz[t] = sg
            g = g * zz * sg
        dy[t] = g
        sD += g * u_row[t]
    return s, sD


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per row
def _row_input_grads(dt, pA, pB, dy, u_row, Dd, delta_row, bias_d, softplus, du_row,
                     ddelta_row):
    """du and d delta of a row from the reverse sweep's per-step sums ``pA`` and ``pB``.

    du_t = dt_t pB_t + D dy_t; d delta_t = pA_t + u_t pB_t, through softplus
    (derivative sigmoid, 1 above 20) when ``softplus``.  Returns the sum of du
    and d delta before softplus (a screen) and that of d delta (the row's
    d delta_bias).  One loop per value of ``softplus`` (:func:`_input_grads_loop` with a
    constant flag), as :func:`_row_output`.
    """
    if softplus:
        return _input_grads_loop(dt, pA, pB, dy, u_row, Dd, delta_row, bias_d, True, du_row,
                                 ddelta_row)
    return _input_grads_loop(dt, pA, pB, dy, u_row, Dd, delta_row, bias_d, False, du_row,
                             ddelta_row)


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # `softplus`: a constant
def _input_grads_loop(dt, pA, pB, dy, u_row, Dd, delta_row, bias_d, softplus, du_row,
                      ddelta_row):
    """:func:`_row_input_grads`'s loop for one value of ``softplus``."""
    s = dt[0] - dt[0]  # typed zero
    sb = s
    for t in range(du_row.size):
        g = dt[t] * pB[t] + Dd * dy[t]
        du_row[t] = g
        gd = pA[t] + u_row[t] * pB[t]
        s += g + gd
        if softplus:
            raw = delta_row[t] + bias_d
            gd = gd if raw > 20 else gd * fast_sigmoid(raw)
        ddelta_row[t] = gd
        sb += gd
    return s, sb


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per row
def _all_normal(dt, a2, zero):
    """True if every ``dt_t * a2_n`` of the row is >= -125: its exps are normal numbers.

    The kernels then use :func:`fast._fastexp.fast_exp2_normal` for the row (no
    clamp, an integer add instead of a multiplication), else the clamped
    :func:`fast._fastexp.fast_exp2_scan`.  A NaN step counts as normal: it makes
    the row's output NaN whichever exp runs, and the row's screen sum catches it.
    """
    lo = zero
    for n in range(a2.size):
        lo = min(lo, a2[n])
    below = 0  # a count, not a max: an integer sum vectorizes (a float max needs "no NaN")
    for t in range(dt.size):
        below += 1 if dt[t] * lo < _NORMAL_LOW else 0
    return below == 0


@njit(inline="always", cache=True)  # in Numba's IR: each call site's `normal` is a constant
def _decay(x2, normal, terms):
    """``2^x2`` (= exp(dt A) for ``x2 = dt A log2 e``) by the variant the row allows.

    ``terms`` is :func:`fast._fastexp.exp2_terms`, a kernel argument: the
    exponential's constants as run-time values, which stay in registers
    through the loop over time (as compile-time constants LLVM reloaded them
    at every step; chapter 11, "Constants in registers").
    """
    return fast_exp2_normal(x2, terms) if normal else fast_exp2_scan(x2, terms)


def _scan_in_ir(zero):
    """Whether the forward's row scan sums its outputs 16 steps at a time
    (:mod:`fast._row_sweep`): True in float32 only.  Measured at the headline size on one
    thread, rows forced (no tiles): float32 1.19x as fast, float64 0.97x (16 float64 lanes
    are two registers, and the exponential, then of degree 13, dominates)."""
    return zero.dtype == np.float32


@overload(_scan_in_ir, jit_options={"cache": True})
def _scan_in_ir_impl(zero):
    in_ir = zero == types.float32
    return lambda zero: in_ir  # a constant: LLVM drops the other branch


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _fwd_row_scan(L, N, dt, bu, a2, h, y, B_row, C_row, b_st, c_st, zero, normal, terms):
    """The recurrence of one row: y_t = <C_t, h_t>, h_t = exp(dt_t A) h_{t-1} + bu_t B_t.

    Blocks of 16 states outside, time inside: the block's state and poles stay
    in vector registers for the whole row (one block for N <= 16).  The first
    block writes y, the others add to it.  The first L mod 16 steps run in
    :func:`_fwd_block_scan`, the others in :mod:`fast._row_sweep`, which sums 16
    steps' outputs at a time (chapter 11, "Sixteen sums at a time").
    """
    head = L % _LANES if _scan_in_ir(zero) else L  # float64: the Numba loop throughout
    for n0 in range(0, N, _LANES):
        if n0 == 0:
            _fwd_block_scan(head, n0, dt, bu, a2, h, y, B_row, C_row, b_st, c_st, zero, normal,
                            terms, False)
        else:
            _fwd_block_scan(head, n0, dt, bu, a2, h, y, B_row, C_row, b_st, c_st, zero, normal,
                            terms, True)
        if normal:
            row_scan_normal(dt, bu, a2, h, y, B_row, C_row, terms, head, (L - head) // _LANES,
                            n0, b_st, c_st, n0 > 0)
        else:
            row_scan_clamped(dt, bu, a2, h, y, B_row, C_row, terms, head, (L - head) // _LANES,
                             n0, b_st, c_st, n0 > 0)


@njit(inline="always", cache=True)  # in Numba's IR: `normal` and `add` are constants
def _fwd_block_scan(L, n0, dt, bu, a2, h, y, B_row, C_row, b_st, c_st, zero, normal, terms,
                    add):
    """States n0 .. n0 + 15 of a row over its L steps; y_t = (y_t if ``add`` else 0) + their
    part of <C_t, h_t>."""
    for t in range(L):
        dtt = dt[t]
        but = bu[t]
        Bt = B_row[np.uint64(t * b_st)]  # (N,); unsigned: no wraparound select
        Ct = C_row[np.uint64(t * c_st)]  # (N,)
        acc = zero
        for j in range(_LANES):  # constant trip count: one vector, no remainder loop
            n = np.uint64(n0 + j)  # unsigned: no negative-index wraparound select
            # Abar h + bu B with one FMA, the same as fast._row_sweep's (which of the two
            # products LLVM would fuse otherwise depends on the code around the loop)
            hn = _fma(but, Bt[n], _decay(dtt * a2[n], normal, terms) * h[n])
            h[n] = hn
            acc += hn * Ct[n]
        if add:
            y[t] += acc
        else:
            y[t] = acc


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _bwd_block_forward(L, n0, dt, bu, dy, a2, h, y, abar, ah, B_row, C_row, dC_row,
                       b_st, c_st, zero, normal, terms):
    """The backward pass's forward sweep of states n0 .. n0 + 15 over the L steps of a row
    (or of a time block).

    Adds their part of y_t = <C_t, h_t> to ``y`` and of dy_t h_t to dC_t, and writes the
    records Abar_t and Abar_t h_{t-1} into ``abar`` and ``ah`` (indexed from the first
    step).
    """
    for t in range(L):
        tt = np.uint64(t)  # unsigned: no negative-index wraparound select
        dtt = dt[tt]
        but = bu[tt]
        dyt = dy[tt]
        Bt = B_row[tt * np.uint64(b_st)]
        Ct = C_row[tt * np.uint64(c_st)]
        dCt = dC_row[tt * np.uint64(c_st)]
        abar_t = abar[tt]
        ah_t = ah[tt]
        acc = zero
        for j in range(_LANES):
            n = np.uint64(n0 + j)
            at = _decay(dtt * a2[n], normal, terms)
            ahn = at * h[n]
            hn = ahn + but * Bt[n]
            abar_t[n] = at
            ah_t[n] = ahn
            h[n] = hn
            acc += hn * Ct[n]
            dCt[n] += dyt * hn
        y[tt] += acc


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _bwd_row_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, B_row, C_row, dC_row,
                     b_st, c_st, zero, normal, terms):
    """:func:`_bwd_block_forward` for every block of 16 states: the whole forward sweep,
    all in Numba (the tests' twin of :func:`_bwd_sweep_forward`)."""
    for n0 in range(0, N, _LANES):
        _bwd_block_forward(L, n0, dt, bu, dy, a2, h, y, abar, ah, B_row, C_row, dC_row,
                           b_st, c_st, zero, normal, terms)


@njit(inline="always", cache=True)  # in Numba's IR: `normal` is a constant
def _bwd_block_sweep(L, n0, dt, bu, dy, a2, h, y, abar, ah, B_row, C_row, dC_row,
                     b_st, c_st, zero, normal, terms):
    """:func:`_bwd_block_forward`'s results, its first L mod 16 steps by it and the others by
    :mod:`fast._row_sweep`, which sums the outputs y_t 16 steps at a time (chapter 11,
    "Sixteen sums at a time")."""
    head = L % _LANES
    _bwd_block_forward(head, n0, dt, bu, dy, a2, h, y, abar, ah, B_row, C_row, dC_row,
                       b_st, c_st, zero, normal, terms)
    if normal:
        row_sweep_normal(dt, bu, dy, a2, h, y, abar, ah, dC_row, B_row, C_row, terms, head,
                         L // _LANES, n0, b_st, c_st)
    else:
        row_sweep_clamped(dt, bu, dy, a2, h, y, abar, ah, dC_row, B_row, C_row, terms, head,
                          L // _LANES, n0, b_st, c_st)


@njit(inline="always", cache=True)  # in Numba's IR: `normal` is a constant
def _bwd_sweep_forward(L, N, dt, bu, dy, a2, h, y, abar3, ah3, B3, C3, dC3, b_st, c_st,
                       zero, normal, terms):
    """:func:`_bwd_row_forward`'s results by :func:`_bwd_block_sweep`, block after block, on
    the blocked layout of :func:`_blocks_of_16` (the records too: (N / 16, L, 16)); the
    tests' view of the forward sweep of :func:`_bwd_row_sweeps`."""
    for n0 in range(0, N, _LANES):
        k = n0 // _LANES
        e = n0 + _LANES
        _bwd_block_sweep(L, 0, dt, bu, dy, a2[n0:e], h[n0:e], y, abar3[k], ah3[k], B3[k],
                         C3[k], dC3[k], b_st, c_st, zero, normal, terms)


@njit(inline="always", cache=True)  # in Numba's IR: `normal` is a constant
def _bwd_row_sweeps(L, N, t0, dt, bu, dy, a, a2, h, g, sdA, y, abar, ah, B3, C3, dB3, dC3,
                    b_st, c_st, pA, pB, zero, normal, terms):
    """Both sweeps of a row (or of the time block of L steps from ``t0``) of the backward,
    one block of 16 states after the other: :func:`_bwd_block_sweep`, then
    :func:`_bwd_block_reverse` over the records it just wrote.

    ``B3``, ``C3``, ``dB3``, ``dC3`` are the row's B, C, dB and dC in blocks of 16
    states, (N / 16, L|1, 16) (:func:`_blocks_of_16`), so that a block's sweeps stream
    contiguous memory, and its records ``abar``, ``ah`` are (L, 16): with the whole-row
    layout (L, N) the sweeps read one cache line in four at N = 64 (the blocked layout
    measured 1.45x at L = 16384 on two threads, chapter 11).  The states of a block are
    handed on as slices (``h[n0:n0 + 16]``, ...), so the sweeps see states 0..15.
    ``g`` and ``sdA`` as in :func:`_bwd_block_reverse`; ``y``, ``pA`` and ``pB`` are
    zeros on entry.
    """
    for n0 in range(0, N, _LANES):
        k = n0 // _LANES
        e = n0 + _LANES
        B_k = _time_slice(B3[k], t0, L, b_st)  # (L|1, 16), contiguous
        C_k = _time_slice(C3[k], t0, L, c_st)
        dB_k = _time_slice(dB3[k], t0, L, b_st)
        dC_k = _time_slice(dC3[k], t0, L, c_st)
        _bwd_block_sweep(L, 0, dt, bu, dy, a2[n0:e], h[n0:e], y, abar, ah, B_k, C_k, dC_k,
                         b_st, c_st, zero, normal, terms)
        _bwd_block_reverse(0, L, 0, dy, dt, bu, a[n0:e], g[n0:e], sdA[n0:e], abar, ah, B_k, C_k,
                           dB_k, b_st, c_st, pA, pB, zero)


@njit(inline="always", cache=True)  # in Numba's IR: `normal` is a constant
def _row_advance(L, N, t0, dt, bu, a2, h, B3, b_st, normal, terms):
    """The state ``h`` carried over the L steps from ``t0`` (written back), nothing else
    computed: the first pass of :func:`_bwd_real_long` (``B3`` in blocks of 16 states, as
    :func:`_bwd_row_sweeps` takes it).  The update is :func:`_bwd_row_forward`'s, operation
    for operation (the FMA written out: left to LLVM, which product it fuses depends on
    the code around the loop), so the states are the same to the bit."""
    for n0 in range(0, N, _LANES):
        B_k = _time_slice(B3[n0 // _LANES], t0, L, b_st)
        for t in range(L):
            tt = np.uint64(t)  # unsigned: no negative-index wraparound select
            dtt = dt[tt]
            but = bu[tt]
            Bt = B_k[tt * np.uint64(b_st)]
            for j in range(_LANES):
                n = np.uint64(n0 + j)
                h[n] = _fma(but, Bt[j], _decay(dtt * a2[n], normal, terms) * h[n])


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _bwd_block_reverse(t0, tn, n0, dy, dt, bu, a, g, sdA, abar, ah, B_row, C_row, dB_row,
                       b_st, c_st, pA, pB, zero):
    """The reverse sweep (eq-selective-backward) over steps t0 + tn - 1 ... t0, states n0..n0+15.

    ``g`` (dLoss/dh) and ``sdA`` (the dA sum) are carried in and out; adds
    sum_n g_n ah_n A_n to ``pA[t]`` and sum_n g_n B_n to ``pB[t]``, g_n bu_t to dB_t.
    ``abar``, ``ah`` hold the block's records, indexed from its first step.
    """
    t0 = np.uint64(t0)
    for i in range(tn - 1, -1, -1):
        t = t0 + np.uint64(i)  # unsigned: no negative-index wraparound select
        ii = np.uint64(i)
        dyt = dy[t]
        dtt = dt[t]
        but = bu[t]
        Bt = B_row[t * np.uint64(b_st)]
        Ct = C_row[t * np.uint64(c_st)]
        dBt = dB_row[t * np.uint64(b_st)]
        abar_t = abar[ii]
        ah_t = ah[ii]
        accA = zero
        accB = zero
        for j in range(_LANES):
            n = np.uint64(n0 + j)
            gn = g[n] + dyt * Ct[n]
            ga = gn * ah_t[n]  # gradient w.r.t. dt_t * A_n
            accA += ga * a[n]
            sdA[n] += ga * dtt
            accB += gn * Bt[n]
            dBt[n] += gn * but
            g[n] = gn * abar_t[n]
        pA[t] += accA
        pB[t] += accB


# ---------------------------------------------------------------------------
# real A: forward, backward, decoding step
# ---------------------------------------------------------------------------

@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _fwd_real(u, delta, A, Bx, Cx, Dv, z, bias, h0,
              has_D, has_z, has_bias, softplus, has_h0, out, last, screen, nchunks, terms):
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    nrows = nb * nd
    # per-thread scratch, allocated here so the parallel body gets it as arguments
    dt_s = np.empty((nchunks, L + _GAP), u.dtype)
    bu_s = np.empty((nchunks, L + _GAP), u.dtype)
    y_s = np.empty((nchunks, L + _GAP), u.dtype)
    h_s = np.empty((nchunks, N + _GAP), u.dtype)
    a_s = np.empty((nchunks, N + _GAP), u.dtype)
    for c in prange(nchunks):  # one block of rows per thread
        dt, bu, y, h, a = dt_s[c], bu_s[c], y_s[c], h_s[c], a_s[c]
        for row in range(c * nrows // nchunks, (c + 1) * nrows // nchunks):
            b = row // nd
            d = row - b * nd
            s_in = _row_steps(delta[b, d], u[b, d], bias[d] if has_bias else zero,
                              softplus, dt, bu, z[b, d] if has_z else u[b, d], has_z)
            _row_start(A, h0, b, d, has_h0, zero, a, h)
            for n in range(N):
                a[n] *= log2e  # exp(dt a) = 2^(dt a log2 e): the argument of _decay
            bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
            B_row = Bx[bb, bg]  # (L or 1, N)
            C_row = Cx[cb, cg]
            if _all_normal(dt[:L], a[:N], zero):  # two copies of the loop, each one exp
                _fwd_row_scan(L, N, dt, bu, a, h, y, B_row, C_row, b_st, c_st, zero, True, terms)
            else:
                _fwd_row_scan(L, N, dt, bu, a, h, y, B_row, C_row, b_st, c_st, zero, False, terms)
            s_out = _row_output(y, u[b, d], Dv[d] if has_D else zero, has_D,
                                z[b, d] if has_z else u[b, d], has_z, out[b, d])
            for n in range(N):
                last[b, d, n] = h[n]
                s_out += h[n]
            screen[row] = s_in + s_out  # not finite: bad input, or float32 overflowed


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _fwd_real_long(u, delta, A, Bx, Cx, Dv, z, bias, h0,
                   has_D, has_z, has_bias, softplus, has_h0, out, last, screen, nchunks,
                   block, starts, save, terms):
    # _fwd_real for rows longer than ``block`` steps: the same arithmetic with the loops over
    # time blocks outside and the thread's rows inside, so that a block's B and C (shared
    # by the rows of a group) stay in cache while every row passes through it; each row's
    # state and screen sum are carried from block to block in per-row scratch.  With
    # ``save``, the state entering block k of row r is written to starts[r, k] (the chunk
    # states _bwd_real_long starts its blocks from).
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    nrows = nb * nd
    T = min(block, L)
    nblocks = (L + T - 1) // T
    maxrows = nrows // nchunks + 1
    dt_s = np.empty((nchunks, T + _GAP), u.dtype)
    bu_s = np.empty((nchunks, T + _GAP), u.dtype)
    y_s = np.empty((nchunks, T + _GAP), u.dtype)
    a_s = np.empty((nchunks, N + _GAP), u.dtype)
    h_s = np.empty((nchunks, maxrows, N), u.dtype)  # each row's state between blocks
    sum_s = np.zeros((nchunks, maxrows + _GAP), u.dtype)  # each row's screen sum
    for c in prange(nchunks):
        dt, bu, y, a, sums = dt_s[c], bu_s[c], y_s[c], a_s[c], sum_s[c]
        r0 = c * nrows // nchunks
        r1 = (c + 1) * nrows // nchunks
        for k in range(nblocks):
            t0 = k * T
            tn = min(T, L - t0)
            for row in range(r0, r1):
                r = row - r0
                b = row // nd
                d = row - b * nd
                h = h_s[c, r]
                u_blk = u[b, d, t0:t0 + tn]
                z_blk = z[b, d, t0:t0 + tn] if has_z else u_blk
                s = _row_steps(delta[b, d, t0:t0 + tn], u_blk, bias[d] if has_bias else zero,
                               softplus, dt, bu, z_blk, has_z)
                if k == 0:
                    _row_start(A, h0, b, d, has_h0, zero, a, h)
                if save:
                    for n in range(N):
                        starts[row, k, n] = h[n]
                for n in range(N):
                    a[n] = A[d, n] * log2e  # exp(dt a) = 2^(dt a log2 e)
                bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
                B_blk = _time_slice(Bx[bb, bg], t0, tn, b_st)  # (tn or 1, N)
                C_blk = _time_slice(Cx[cb, cg], t0, tn, c_st)
                if _all_normal(dt[:tn], a[:N], zero):
                    _fwd_row_scan(tn, N, dt, bu, a, h, y, B_blk, C_blk, b_st, c_st, zero, True,
                                  terms)
                else:
                    _fwd_row_scan(tn, N, dt, bu, a, h, y, B_blk, C_blk, b_st, c_st, zero, False,
                                  terms)
                s += _row_output(y, u_blk, Dv[d] if has_D else zero, has_D, z_blk, has_z,
                                 out[b, d, t0:t0 + tn])
                sums[r] += s
                if k == nblocks - 1:
                    for n in range(N):
                        last[b, d, n] = h[n]
                        sums[r] += h[n]
                    screen[row] = sums[r]  # not finite: bad input, or float32 overflowed


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _bwd_real(dout, u, delta, A, Bx, Cx, Dv, z, bias, h0, dlast,
              has_D, has_z, has_bias, softplus, has_h0, has_dlast,
              du, ddelta, dz, dh0, dA_c, dB_c, dC_c, dD_c, dbias_c, screen, block, terms):
    # Rows one after the other, each row's records (T = L steps) kept whole: nothing is
    # recomputed.  _backward launches it only for L <= block; longer rows go to
    # _bwd_real_long, which runs in time blocks and keeps B, C, dB, dC in cache.
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    one = u.dtype.type(1)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    nrows = nb * nd
    nchunks = dA_c.shape[0]
    # per-thread scratch, allocated here so the parallel body gets it as arguments
    dt_s = np.empty((nchunks, L + _GAP), u.dtype)
    bu_s = np.empty((nchunks, L + _GAP), u.dtype)
    y_s = np.empty((nchunks, L + _GAP), u.dtype)
    dy_s = np.empty((nchunks, L + _GAP), u.dtype)
    pA_s = np.empty((nchunks, L + _GAP), u.dtype)  # sum_n dLoss/d(dt A_n) * A_n per step
    pB_s = np.empty((nchunks, L + _GAP), u.dtype)  # sum_n dLoss/dh_n * B_n per step
    sz_s = np.empty((nchunks, L + _GAP), u.dtype)  # sigmoid(z_t), for dy and dz
    dsp_s = np.empty((nchunks, L + _GAP), u.dtype)  # softplus'(delta_t + bias)
    abar_s = np.empty((nchunks, L + 1, _LANES), u.dtype)  # Abar_t = exp(dt_t A) of a block
    ah_s = np.empty((nchunks, L + 1, _LANES), u.dtype)  # Abar_t * h_{t-1}; +1: a gap
    a_s = np.empty((nchunks, N + _GAP), u.dtype)
    a2_s = np.empty((nchunks, N + _GAP), u.dtype)
    h_s = np.empty((nchunks, N + _GAP), u.dtype)
    g_s = np.empty((nchunks, N + _GAP), u.dtype)
    sdA_s = np.empty((nchunks, N + _GAP), u.dtype)
    for c in prange(nchunks):  # one chunk of rows per thread, its own dA/dB/dC copies
        dt, bu, y, dy, pA, pB, sz = (dt_s[c], bu_s[c], y_s[c], dy_s[c], pA_s[c], pB_s[c],
                                      sz_s[c])
        abar, ah, dsp = abar_s[c], ah_s[c], dsp_s[c]
        a, a2, h, g, sdA = a_s[c], a2_s[c], h_s[c], g_s[c], sdA_s[c]
        for row in range(c * nrows // nchunks, (c + 1) * nrows // nchunks):
            b = row // nd
            d = row - b * nd
            bias_d = bias[d] if has_bias else zero
            Dd = Dv[d] if has_D else zero
            u_row = u[b, d]
            z_row = z[b, d] if has_z else u_row
            s, sD = _row_prep(delta[b, d], u_row, bias_d, softplus, dout[b, d], z_row, has_z,
                              dt, bu, dsp, sz, dy, zero)
            for t in range(L):
                y[t] = zero
                pA[t] = zero
                pB[t] = zero
            _row_start(A, h0, b, d, has_h0, zero, a, h)
            for n in range(N):
                a2[n] = a[n] * log2e  # exp(dt a) = 2^(dt a log2 e)
            bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
            B_row = Bx[bb, bg]  # (N / 16, L or 1, 16)
            C_row = Cx[cb, cg]
            dB_row = dB_c[c, bb, bg]
            dC_row = dC_c[c, cb, cg]
            # 1. forward again: y, dC_t = dy_t h_t and the records Abar_t, Abar_t h_{t-1}
            # of the whole row (one block of T = L steps); 2. the reverse sweep over them:
            # g = dLoss/dh_t (eq-selective-backward); both by blocks of 16 states
            for n in range(N):
                g[n] = dlast[b, d, n] if has_dlast else zero
                sdA[n] = zero
            if _all_normal(dt[:L], a2[:N], zero):  # two copies of the loop, each with one exp
                _bwd_row_sweeps(L, N, 0, dt, bu, dy, a, a2, h, g, sdA, y, abar, ah, B_row, C_row,
                                dB_row, dC_row, b_st, c_st, pA, pB, zero, True, terms)
            else:
                _bwd_row_sweeps(L, N, 0, dt, bu, dy, a, a2, h, g, sdA, y, abar, ah, B_row, C_row,
                                dB_row, dC_row, b_st, c_st, pA, pB, zero, False, terms)
            # 3. du, d delta and dz
            s_g, sb = _row_grads(dt, pA, pB, dy, dsp, u_row, Dd, du[b, d], ddelta[b, d], has_z,
                                 dout[b, d], z_row, sz, y, dz[b, d] if has_z else dz[0, 0], one)
            s += s_g
            dbias_c[c, d] += sb
            dD_c[c, d] += sD
            for n in range(N):
                dA_c[c, d, n] += sdA[n]
                dh0[b, d, n] = g[n]
                s += g[n]
            screen[row] = s  # not finite: bad input, or float32 overflowed


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _bwd_real_long(dout, u, delta, A, Bx, Cx, Dv, z, bias, h0, dlast,
                   has_D, has_z, has_bias, softplus, has_h0, has_dlast,
                   du, ddelta, dz, dh0, dA_c, dB_c, dC_c, dD_c, dbias_c, screen, block,
                   starts, has_starts, terms):
    # _bwd_real for L > block, in time blocks of T = block steps with the loops over blocks
    # outside and the thread's rows inside, so that a block's B, C, dB and dC (shared by
    # the rows) and a row's records stay in cache while every row passes through it.
    # 1. Blocks from the first: each row's state is only carried forward (_row_advance:
    #    the exponential and the update, no output, no record) and saved at every block's
    #    start, in starts[row, k].  2. Blocks from the last: from the saved state, each
    #    row's block runs as a whole row of _bwd_real does (the forward sweep with records,
    #    y and dC, then the reverse sweep and the input gradients); dLoss/dh, the dA sum and
    #    the row's sums are carried from block to block.  The price of the blocks is pass 1;
    #    ``has_starts``: a forward already wrote ``starts`` (_fwd_real_long with ``save``:
    #    the same states to the bit; fwd_tiles_long: to a rounding), and pass 1 is skipped.
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    one = u.dtype.type(1)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    nrows = nb * nd
    nchunks = dA_c.shape[0]
    T = min(block, L)
    nblocks = (L + T - 1) // T
    maxrows = nrows // nchunks + 1
    # per-thread scratch of one block
    dt_s = np.empty((nchunks, T + _GAP), u.dtype)
    bu_s = np.empty((nchunks, T + _GAP), u.dtype)
    y_s = np.empty((nchunks, T + _GAP), u.dtype)
    dy_s = np.empty((nchunks, T + _GAP), u.dtype)
    pA_s = np.empty((nchunks, T + _GAP), u.dtype)
    pB_s = np.empty((nchunks, T + _GAP), u.dtype)
    sz_s = np.empty((nchunks, T + _GAP), u.dtype)
    dsp_s = np.empty((nchunks, T + _GAP), u.dtype)
    abar_s = np.empty((nchunks, T + 1, _LANES), u.dtype)  # a block of 16 states' records
    ah_s = np.empty((nchunks, T + 1, _LANES), u.dtype)
    a_s = np.empty((nchunks, N + _GAP), u.dtype)
    a2_s = np.empty((nchunks, N + _GAP), u.dtype)
    # per-row scratch carried from block to block
    h_s = np.empty((nchunks, maxrows, N), u.dtype)
    g_s = np.empty((nchunks, maxrows, N), u.dtype)
    sdA_s = np.empty((nchunks, maxrows, N), u.dtype)
    sums_s = np.zeros((nchunks, maxrows, 3), u.dtype)  # screen, dD and d delta_bias sums
    for c in prange(nchunks):
        dt, bu, y, dy, pA, pB, sz = (dt_s[c], bu_s[c], y_s[c], dy_s[c], pA_s[c], pB_s[c],
                                      sz_s[c])
        abar, ah, a, a2, dsp = abar_s[c], ah_s[c], a_s[c], a2_s[c], dsp_s[c]
        r0 = c * nrows // nchunks
        r1 = (c + 1) * nrows // nchunks
        # 1. the state entering each block (the last block's own steps are not needed)
        for k in range(0 if has_starts else nblocks):
            t0 = k * T
            tn = min(T, L - t0)
            for row in range(r0, r1):
                r = row - r0
                b = row // nd
                d = row - b * nd
                h = h_s[c, r]
                if k == 0:
                    _row_start(A, h0, b, d, has_h0, zero, a, h)
                for n in range(N):
                    starts[row, k, n] = h[n]
                if k == nblocks - 1:
                    continue
                u_blk = u[b, d, t0:t0 + tn]
                _row_steps(delta[b, d, t0:t0 + tn], u_blk, bias[d] if has_bias else zero,
                           softplus, dt, bu, u_blk, False)  # the screen sums: in pass 2
                for n in range(N):
                    a2[n] = A[d, n] * log2e
                bb, bg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)[:2]
                if _all_normal(dt[:tn], a2[:N], zero):
                    _row_advance(tn, N, t0, dt, bu, a2, h, Bx[bb, bg], b_st, True, terms)
                else:
                    _row_advance(tn, N, t0, dt, bu, a2, h, Bx[bb, bg], b_st, False, terms)
        # 2. blocks from the last: each as a whole row of _bwd_real, from its saved state
        for k in range(nblocks - 1, -1, -1):
            t0 = k * T
            tn = min(T, L - t0)
            for row in range(r0, r1):
                r = row - r0
                b = row // nd
                d = row - b * nd
                h, g, sdA, sums = h_s[c, r], g_s[c, r], sdA_s[c, r], sums_s[c, r]
                Dd = Dv[d] if has_D else zero
                u_blk = u[b, d, t0:t0 + tn]
                z_blk = z[b, d, t0:t0 + tn] if has_z else u_blk
                dout_blk = dout[b, d, t0:t0 + tn]
                s, sD = _row_prep(delta[b, d, t0:t0 + tn], u_blk, bias[d] if has_bias else zero,
                                  softplus, dout_blk, z_blk, has_z, dt, bu, dsp, sz, dy, zero)
                for i in range(tn):
                    y[i] = zero
                    pA[i] = zero
                    pB[i] = zero
                if k == nblocks - 1:
                    for n in range(N):
                        g[n] = dlast[b, d, n] if has_dlast else zero
                        sdA[n] = zero
                for n in range(N):
                    a[n] = A[d, n]
                    a2[n] = A[d, n] * log2e
                    h[n] = starts[row, k, n]
                bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
                B3, C3, dB3, dC3 = Bx[bb, bg], Cx[cb, cg], dB_c[c, bb, bg], dC_c[c, cb, cg]
                if _all_normal(dt[:tn], a2[:N], zero):
                    _bwd_row_sweeps(tn, N, t0, dt, bu, dy, a, a2, h, g, sdA, y, abar, ah, B3, C3,
                                    dB3, dC3, b_st, c_st, pA, pB, zero, True, terms)
                else:
                    _bwd_row_sweeps(tn, N, t0, dt, bu, dy, a, a2, h, g, sdA, y, abar, ah, B3, C3,
                                    dB3, dC3, b_st, c_st, pA, pB, zero, False, terms)
                s_g, sb = _row_grads(dt, pA, pB, dy, dsp, u_blk, Dd, du[b, d, t0:t0 + tn],
                                     ddelta[b, d, t0:t0 + tn], has_z, dout_blk, z_blk, sz, y,
                                     dz[b, d, t0:t0 + tn] if has_z else dz[0, 0, 0:1], one)
                sums[0] += s + s_g
                sums[1] += sD
                sums[2] += sb
                if k == 0:
                    dbias_c[c, d] += sums[2]
                    dD_c[c, d] += sums[1]
                    for n in range(N):
                        dA_c[c, d, n] += sdA[n]
                        dh0[b, d, n] = g[n]
                        sums[0] += g[n]
                    screen[row] = sums[0]  # not finite: bad input, or float32 overflowed


@njit(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _update_real(state, x, dt, A, Bx, Cx, Dv, z, bias,
                 has_D, has_z, has_bias, softplus, y, new_state):
    nb, nd, N = state.shape
    zero = x.dtype.type(0)
    b_gd = nd // Bx.shape[1]
    c_gd = nd // Cx.shape[1]
    for row in prange(nb * nd):
        b = row // nd
        d = row - b * nd
        s = dt[b, d] + (bias[d] if has_bias else zero)
        if softplus:
            s = fast_softplus(s)
        bx = s * x[b, d]
        Bt = Bx[b, d // b_gd]
        Ct = Cx[b, d // c_gd]
        acc = zero
        for n in range(N):  # short (one step): not worth padding
            hn = fast_exp_clamped(s * A[d, n]) * state[b, d, n] + bx * Bt[n]
            new_state[b, d, n] = hn
            acc += hn * Ct[n]
        if has_D:
            acc += Dv[d] * x[b, d]
        if has_z:
            zz = z[b, d]
            acc = acc * zz * fast_sigmoid(zz)
        y[b, d] = acc


# ---------------------------------------------------------------------------
# complex A (complex128 throughout; y = 2 Re <C, h>)
# ---------------------------------------------------------------------------

@njit(parallel=True, error_model="numpy", cache=True)
def _fwd_complex(u, delta, A, Bx, Cx, Dv, z, bias, h0,
                 has_D, has_z, has_bias, softplus, has_h0, out, last, screen, nchunks):
    nb, nd, L = u.shape
    N = A.shape[1]
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    for row in prange(nb * nd):
        b = row // nd
        d = row - b * nd
        dt = np.empty(L)
        bu = np.empty(L)
        y = np.empty(L)
        h = np.zeros(N, np.complex128)
        s = _row_steps(delta[b, d], u[b, d], bias[d] if has_bias else 0.0, softplus,
                           dt, bu, z[b, d] if has_z else u[b, d], has_z)
        screen[row] = s
        if has_h0:
            for n in range(N):
                h[n] = h0[b, d, n]
        bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
        for t in range(L):
            acc = 0.0
            for n in range(N):
                hn = cmath.exp(dt[t] * A[d, n]) * h[n] + bu[t] * Bx[bb, bg, t * b_st, n]
                h[n] = hn
                acc += (Cx[cb, cg, t * c_st, n] * hn).real
            y[t] = 2.0 * acc
        _row_output(y, u[b, d], Dv[d] if has_D else 0.0, has_D,
                    z[b, d] if has_z else u[b, d], has_z, out[b, d])
        for n in range(N):
            last[b, d, n] = h[n]


@njit(parallel=True, error_model="numpy", cache=True)
def _bwd_complex(dout, u, delta, A, Bx, Cx, Dv, z, bias, h0, dlast,
                 has_D, has_z, has_bias, softplus, has_h0, has_dlast,
                 du, ddelta, dz, dh0, dA_c, dB_c, dC_c, dD_c, dbias_c, screen, block):
    # block (the real kernel's steps per block) is unused: no per-block records here
    nb, nd, L = u.shape
    N = A.shape[1]
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    nrows = nb * nd
    nchunks = dA_c.shape[0]
    for c in prange(nchunks):
        dt = np.empty(L)
        bu = np.empty(L)
        y = np.empty(L)
        dy = np.empty(L)
        hs = np.empty((L + 1, N), np.complex128)
        abar = np.empty((L, N), np.complex128)
        g = np.empty(N, np.complex128)
        for row in range(c * nrows // nchunks, (c + 1) * nrows // nchunks):
            b = row // nd
            d = row - b * nd
            bias_d = bias[d] if has_bias else 0.0
            Dd = Dv[d] if has_D else 0.0
            s = _row_steps(delta[b, d], u[b, d], bias_d, softplus,
                               dt, bu, z[b, d] if has_z else u[b, d], has_z)
            for t in range(L):
                s += dout[b, d, t]
            screen[row] = s
            for n in range(N):
                hs[0, n] = h0[b, d, n] if has_h0 else 0.0
            bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
            for t in range(L):
                acc = 0.0
                for n in range(N):
                    at = cmath.exp(dt[t] * A[d, n])
                    hn = at * hs[t, n] + bu[t] * Bx[bb, bg, t * b_st, n]
                    abar[t, n] = at
                    hs[t + 1, n] = hn
                    acc += (Cx[cb, cg, t * c_st, n] * hn).real
                y[t] = 2.0 * acc
            sD = 0.0
            for t in range(L):
                if has_z:
                    zz = z[b, d, t]
                    sg = 1.0 / (1.0 + np.exp(-zz))
                    v = y[t] + Dd * u[b, d, t]
                    dz[b, d, t] = dout[b, d, t] * v * sg * (1.0 + zz * (1.0 - sg))
                    dy[t] = dout[b, d, t] * zz * sg
                else:
                    dy[t] = dout[b, d, t]
                sD += dy[t] * u[b, d, t]
            for n in range(N):
                g[n] = dlast[b, d, n] if has_dlast else 0.0
            for t in range(L - 1, -1, -1):
                dyt2 = 2.0 * dy[t]  # y = 2 Re <C, h>
                accA = 0.0
                accB = 0.0
                for n in range(N):
                    Ctn = Cx[cb, cg, t * c_st, n]
                    Btn = Bx[bb, bg, t * b_st, n]
                    gn = g[n] + dyt2 * Ctn.conjugate()
                    at = abar[t, n]
                    ga = (at * hs[t, n]).conjugate() * gn  # gradient w.r.t. dt_t * A_n
                    accA += (A[d, n].conjugate() * ga).real
                    dA_c[c, d, n] += dt[t] * ga
                    accB += (Btn.conjugate() * gn).real
                    dB_c[c, bb, bg, t * b_st, n] += bu[t] * gn
                    dC_c[c, cb, cg, t * c_st, n] += dyt2 * hs[t + 1, n].conjugate()
                    g[n] = at.conjugate() * gn
                du[b, d, t] = dt[t] * accB + Dd * dy[t]
                ddelta[b, d, t] = accA + u[b, d, t] * accB
            sb = 0.0
            for t in range(L):
                gd = ddelta[b, d, t]
                if softplus:
                    raw = delta[b, d, t] + bias_d
                    gd = gd if raw > 20 else gd / (1.0 + np.exp(-raw))
                    ddelta[b, d, t] = gd
                sb += gd
            dbias_c[c, d] += sb
            dD_c[c, d] += sD
            for n in range(N):
                dh0[b, d, n] = g[n]


@njit(parallel=True, error_model="numpy", cache=True)
def _update_complex(state, x, dt, A, Bx, Cx, Dv, z, bias,
                    has_D, has_z, has_bias, softplus, y, new_state):
    nb, nd, N = state.shape
    b_gd = nd // Bx.shape[1]
    c_gd = nd // Cx.shape[1]
    for row in prange(nb * nd):
        b = row // nd
        d = row - b * nd
        s = dt[b, d] + (bias[d] if has_bias else 0.0)
        if softplus:
            s = fast_softplus(s)
        acc = 0.0
        for n in range(N):
            hn = cmath.exp(s * A[d, n]) * state[b, d, n] + s * x[b, d] * Bx[b, d // b_gd, n]
            new_state[b, d, n] = hn
            acc += (Cx[b, d // c_gd, n] * hn).real
        acc = 2.0 * acc
        if has_D:
            acc += Dv[d] * x[b, d]
        if has_z:
            zz = z[b, d]
            acc = acc * zz / (1.0 + np.exp(-zz))
        y[b, d] = acc


# ---------------------------------------------------------------------------
# validation and layout (Python)
# ---------------------------------------------------------------------------

def _compute_dtype(dtype):
    """float32 (and narrower) input is computed in float32, anything else in float64."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize <= 4 else np.dtype(np.float64)


def _check_structure(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    """The reference's cheap checks (:func:`ssm_ref.scan_args.check_scan_structure`).

    The checks over the (B, D, L) arrays are left to the kernels, which screen
    them; the scan needs ``u`` (hidden attention, the one caller without it,
    is not here).
    """
    if u is None:
        raise TypeError("Parameter u is None but an array was expected")
    return check_scan_structure(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)


@njit(parallel=True, cache=True)
def _tiled_copy(src, out):
    """``out[...] = src`` for (B, D, L) arrays, ``src`` of any strides, by 32 x 32 tiles of (D, L).

    The vision blocks keep tokens channels-last, so ``u``, ``delta`` and ``z``
    often arrive as transposed views whose L axis has the largest stride.
    NumPy copies such a view in output order, reading ``src`` 8 KB apart at
    every element; a tile touches 32 cache lines of each side, which stay in
    L1.  About 3x faster than ``np.ascontiguousarray`` (chapter 11).
    """
    nb, nd, nl = src.shape
    tile = 32
    d_tiles = (nd + tile - 1) // tile
    for job in prange(nb * d_tiles):
        b = job // d_tiles
        d0 = (job % d_tiles) * tile
        d1 = min(d0 + tile, nd)
        for l0 in range(0, nl, tile):
            l1 = min(l0 + tile, nl)
            for d in range(d0, d1):
                for t in range(l0, l1):
                    out[b, d, t] = src[b, d, t]


def _contiguous(X, dtype):
    """A (B, D, L) array as C-contiguous ``dtype``: no copy if it already is one."""
    if (X.flags.c_contiguous or X.ndim != 3 or X.size < 4096
            or X.dtype not in (np.float32, np.float64)):  # Numba has no bfloat16 (nor float16)
        return np.ascontiguousarray(X, dtype=dtype)
    out = np.empty(X.shape, dtype)
    _launch(_tiled_copy, X, out)  # a strided view, e.g. channels-last tokens seen as (B, D, L)
    return out


def _padded(n):
    """N rounded up to a multiple of ``_LANES``."""
    return -(-n // _LANES) * _LANES


def _pad_last(X, n_padded, dtype):
    """Copy ``X`` into a zero array whose last axis has ``n_padded`` entries."""
    if X.shape[-1] == n_padded:
        return np.ascontiguousarray(X, dtype=dtype)
    out = np.zeros(X.shape[:-1] + (n_padded,), dtype)
    out[..., :X.shape[-1]] = X
    return out


def _layout_bc(X, form, work, n_padded, paired=False, blocked=False):
    """B or C -> (B or 1, G', L or 1, N padded), contiguous, dtype ``work``.

    ``paired``: the layout of :mod:`fast.numba_pairs`, the argument's own
    (B or 1, G', N, L or 1) (no copy where ``X`` is contiguous in ``work``; the
    pair kernels lay out each group as they reach it).  ``blocked``: the real
    row backward's layout, (B or 1, G', N padded / 16, L or 1, 16) (:func:`_blocks_of_16`).
    """
    X = X.reshape(form.view_shape(X.shape))  # (B|1, G', N, L|1)
    if paired:
        return np.ascontiguousarray(X, dtype=work)
    X = np.swapaxes(X, 2, 3)  # (.., L|1, N)
    if blocked:
        return _blocks_of_16(_pad_last(X, n_padded, work))
    if X.shape[-1] == n_padded:  # nothing to pad (the tiles): transposed by tiles, all cores
        return _contiguous(X.reshape((-1,) + X.shape[2:]), work).reshape(X.shape)
    return _pad_last(X, n_padded, work)


def _blocks_of_16(X):
    """(..., L|1, Np) -> (..., Np / 16, L|1, 16), contiguous: the states in blocks of 16, each
    block's steps one after the other (for N = 16 the same memory, reshaped)."""
    shape = X.shape[:-1] + (X.shape[-1] // _LANES, _LANES)
    return np.ascontiguousarray(np.swapaxes(X.reshape(shape), -3, -2))


def _from_blocks_of_16(X):
    """:func:`_blocks_of_16` undone: (..., Np / 16, L|1, 16) -> (..., L|1, Np)."""
    X = np.swapaxes(X, -3, -2)
    return X.reshape(X.shape[:-2] + (X.shape[-2] * _LANES,))


def _paired(s, real, direction):
    """True if the ``direction`` ("forward" or "backward") of ``s`` runs the pair kernels."""
    block = (_fwd_block if direction == "forward" else _bwd_block)(_LANES, real)
    return _pairs.pairs_apply(s, block, real, direction)


def _tiled(s, real, direction):
    """True if the ``direction`` of ``s`` runs the channel tiles of :mod:`fast.numba_tiles`."""
    block = (_fwd_block if direction == "forward" else _bwd_block)(s.dstate, real)
    return _tiles.tiles_apply(s, block, real, direction)


def _layout(s, real, direction):
    """``(paired, tiled, blocked)``: the layout the ``direction`` of ``s`` takes its arrays in.

    ``paired``: for the pair kernels (:func:`_paired`), A and h0 padded to 8 states, B
    and C in the arguments' layout; ``tiled``: for the channel tiles (:func:`_tiled`), N
    not padded;
    ``blocked``: the 16-lane real row backward's B and C in blocks of 16
    states (:func:`_blocks_of_16`); otherwise N padded to a multiple of 16.
    """
    # tiles first (they also avoid the padding of N <= 8), unless pairs are forced on
    tiled = not _pairs.forced_on() and _tiled(s, real, direction)
    paired = not tiled and _paired(s, real, direction)
    blocked = direction == "backward" and not (paired or tiled or s.is_complex)
    return paired, tiled, blocked


def _kernel_args(s, real, direction, rows=None):
    """The arrays the scan kernels take (from a ScanArgs), dummies for the missing ones.

    ``paired``, ``tiled`` and ``blocked`` (bools among the arrays) say how they
    are laid out (:func:`_layout`).  ``rows``: the (B, D, L) kernel arrays
    ``u``, ``delta`` and ``z`` already made in ``real`` (by the forward, for
    its backward), used instead of making them again.
    """
    state_t = np.complex128 if s.is_complex else real
    paired, tiled, blocked = _layout(s, real, direction)
    npad = _pairs.HALF if paired else s.dstate if tiled else _padded(s.dstate)
    dummy1 = np.zeros(1, real)
    dummy3 = np.zeros((1, 1, 1), real)
    if rows is None:
        rows = dict(u=_contiguous(s.u, real), delta=_contiguous(s.delta, real),
                    z=dummy3 if s.z is None else _contiguous(s.z, real))
    return dict(
        paired=paired,
        tiled=tiled,
        blocked=blocked,
        **rows,
        A=_pad_last(s.A, npad, state_t),  # (D, Np)
        Bx=_layout_bc(s.B, s.form_B, state_t, npad, paired, blocked),  # (B|1, G', L|1, Np),
        Cx=_layout_bc(s.C, s.form_C, state_t, npad, paired, blocked),  # or see there
        Dv=dummy1 if s.D is None else np.ascontiguousarray(s.D, dtype=real),
        bias=dummy1 if s.delta_bias is None
        else np.ascontiguousarray(s.delta_bias, dtype=real),
        h0=np.zeros((1, 1, 1), state_t) if s.h0 is None
        else _pad_last(s.h0, npad, state_t),  # (B, D, Np)
    )


def _maybe_negative(s):
    """A cheap, conservative screen for negative steps: ``min(delta) + min(delta_bias) < 0``.

    With ``delta_softplus`` every step is >= 0 and nothing needs screening.
    """
    if s.delta_softplus:
        return False
    low = float(np.min(s.delta)) + (0.0 if s.delta_bias is None else float(np.min(s.delta_bias)))
    return low < 0


def _screen_failed(screen, maybe_negative):
    """True if a (B, D, L) input may hold NaN/inf, or a step may be negative.

    ``screen`` holds one sum of u, delta, z (and dout) per row: a NaN or inf
    anywhere makes its row's sum non-finite (an overflow of a finite sum only
    costs a call of the reference's validator).  ``maybe_negative`` is
    :func:`_maybe_negative`.
    """
    return maybe_negative or not bool(np.all(np.isfinite(screen)))


def _validated(check, reference_check):
    """Run the fast ``check``; if it raises, let the reference raise its own error.

    The fast checks are the reference's, so normally the reference raises
    the same error; if it does not (a bug here), the fast error is raised.
    """
    try:
        return check()
    except (ValueError, TypeError) as fast_error:
        reference_check()
        raise fast_error


def _threads(rows):
    """Blocks of rows = Numba's thread count (``numba.set_num_threads``), at most ``rows``."""
    return max(1, min(numba.get_num_threads(), rows))


#: kernel arrays from the arguments without a length axis, and the argument each comes from
_SMALL = {"A": "A", "Bx": "B", "Cx": "C", "Dv": "D", "bias": "delta_bias", "h0": "h0"}


def _fitting_kernel_args(s, direction):
    """``(real, kernel arrays)``: the compute dtype and the arrays cast to it, for ``direction``.

    float32 ``u`` is computed in float32 unless an argument given in a wider
    dtype does not fit float32 (``A = -1e300`` would become ``-inf``, and
    ``0 * -inf`` a NaN): then in float64, as the reference.  The (B, D, L)
    arguments are checked by the kernels' screen instead.
    """
    real = np.dtype(np.float64) if s.is_complex else _compute_dtype(s.out_dtype)
    with np.errstate(over="ignore"):  # a float64 argument beyond float32: seen just below
        k = _kernel_args(s, real, direction)
    if real == np.float32 and not all(
            np.isfinite(k[key]).all() for key, name in _SMALL.items()
            if getattr(s, name) is not None and s.dtypes[name].itemsize > 4):
        real = np.dtype(np.float64)
        k = _kernel_args(s, real, direction)
    return real, k


def _fwd_block(npad, dtype):
    """Time steps per block of the real forward kernel: :data:`_FWD_BC_BYTES` for the B and
    C of a block, two (T, ``npad``) arrays of ``dtype``, at least 16."""
    return max(16, _FWD_BC_BYTES // (2 * npad * np.dtype(dtype).itemsize))


def _bwd_block(npad, dtype):
    """Time steps per block of the real backward kernel: :data:`_BWD_RECORD_BYTES` for two
    (T, ``npad``) records of ``dtype``, and where :data:`_BWD_CACHE_BYTES` is set, at most
    what fits it per step (two records of 16 states, and B, C, dB and dC of ``npad``
    states); a multiple of 16 (the tile forward's blocks, which save the backward's chunk
    states, :func:`_forward`), at least 16."""
    itemsize = np.dtype(dtype).itemsize
    steps = _BWD_RECORD_BYTES // (2 * npad * itemsize)
    if _BWD_CACHE_BYTES is not None:
        steps = min(steps, _BWD_CACHE_BYTES // ((2 * _LANES + 4 * npad) * itemsize))
    return max(16, steps // _LANES * _LANES)


def _starts_block(s, k, real):
    """The backward's time block (:func:`_bwd_block`) if the forward of ``s`` on kernel arrays
    ``k`` (``real``) can hand its backward the state entering each of its blocks, else None:
    a real scan longer than one block, whose backward therefore runs :func:`_bwd_real_long`,
    and whose forward runs tiles, or rows in blocks of the backward's length (as on AMD's
    Zen, where both blocks come from the same 2 MB), so that its output is the plain
    forward's to the bit.  The pairs take rows of one block only."""
    if s.is_complex or k["paired"]:
        return None
    block = _bwd_block(_padded(s.dstate), real)
    if s.length > block and (k["tiled"] or _fwd_block(k["A"].shape[1], real) == block):
        return block
    return None


def _forward(s, k, real, keep_starts=False):
    """Run the forward kernel on the kernel arrays ``k``: ``(out, last, screen, starts)``.

    ``starts``: with ``keep_starts`` where :func:`_starts_block` allows, the state
    entering each of the backward's time blocks, (B D, blocks, N padded to 16), for
    :func:`_backward` (the official kernels' forward keeps its chunk states for its
    backward in the same way); the forward then runs in the backward's blocks.
    Otherwise None.
    """
    paired = k["paired"]  # N <= 8: two rows per vector
    tiled = k["tiled"]  # 16 channels per vector: the tiles are the unit of parallel work
    nchunks = _threads(_tiles.tile_count(s) if tiled else s.batch * s.dim)
    out = np.empty((s.batch, s.dim, s.length), real)  # (B, D, L)
    last = np.empty((s.batch, s.dim, k["A"].shape[1]),
                    np.complex128 if s.is_complex else real)  # (B, D, Np), Np = 8 paired
    screen = np.empty(s.batch * s.dim, real)
    args = (k["u"], k["delta"], k["A"], k["Bx"], k["Cx"], k["Dv"], k["z"], k["bias"],
            k["h0"], s.D is not None, s.z is not None, s.delta_bias is not None,
            s.delta_softplus, s.h0 is not None, out, last, screen, nchunks)
    block = _starts_block(s, k, real) if keep_starts else None  # then the forward runs in it
    starts = (None if block is None
              else np.zeros((s.batch * s.dim, -(-s.length // block), _padded(s.dstate)), real))
    if s.is_complex:
        _launch(_fwd_complex, *args)
    elif paired:
        _launch(_pairs.fwd_pairs_short if s.length < _spans.SPAN_BELOW else _pairs.fwd_pairs,
                *args, exp2_terms(real))  # short rows: per-row passes over spans of rows
    elif tiled:
        if block is None:
            block = _fwd_block(s.dstate, real)  # the tiles' N is not padded
        if s.length <= block:  # short rows: per-row passes over spans of tiles
            _launch(_tiles.fwd_tiles_short if s.length < _spans.SPAN_BELOW else _tiles.fwd_tiles,
                    *args, exp2_terms(real))
        else:
            _launch(_tiles.fwd_tiles_long, *args, block, *_starts_args(starts, real))
    else:
        if block is None:
            block = _fwd_block(k["A"].shape[1], real)
        if s.length <= block:
            _launch(_fwd_real, *args, exp2_terms(real))
        else:
            _launch(_fwd_real_long, *args, block, *_starts_args(starts, real))
    return out, last, screen, starts


def _starts_args(starts, real):
    """The long forward kernels' last arguments: ``starts`` (a dummy when None), whether to
    write it, the exp's terms."""
    given = starts is not None
    return (starts if given else np.zeros((1, 1, 1), real)), given, exp2_terms(real)


def _backward(s, k, real, dout, dlast_state, starts=None):
    """Run the backward kernel: ``(grads, screen)``, gradients in the kernels' dtype.

    ``starts``: the forward's states entering each time block (:func:`_forward`), or None.
    """
    state_t = np.dtype(np.complex128) if s.is_complex else real
    batch, dim, length, dstate = s.batch, s.dim, s.length, s.dstate
    tiled = k["tiled"]  # 16 channels per vector: the tiles are the unit of parallel work
    paired = k["paired"]  # N <= 8: two rows per vector, whole groups per thread
    nchunks = _threads(_tiles.tile_count(s) if tiled else _pairs.unit_count(s) if paired
                       else batch * dim)
    npad = k["A"].shape[1]  # 8 when paired
    block = _bwd_block(npad, state_t)  # the 16-lane kernels' (unused when paired)
    dlast = (np.zeros((1, 1, 1), state_t) if dlast_state is None
             else _pad_last(dlast_state, npad, state_t))  # (B, D, Np)
    du = np.empty((batch, dim, length), real)  # (B, D, L)
    ddelta = np.empty((batch, dim, length), real)  # (B, D, L)
    dz = np.empty((batch, dim, length) if s.z is not None else (1, 1, 1), real)
    dh0 = np.empty((batch, dim, npad), state_t)  # (B, D, Np)
    dA_c = np.zeros((nchunks,) + k["A"].shape, state_t)  # (threads, D, N)
    touched = (None, None)  # the tiles': which units of each thread's copy it wrote
    if paired:  # written whole by the kernel, in the arguments' layout (B|1, G', N, L|1)
        dB_c, dC_c = np.empty(k["Bx"].shape, state_t), np.empty(k["Cx"].shape, state_t)
    elif tiled:  # one copy per thread, written where its tiles went (marked in touched)
        dB_c = np.empty((nchunks,) + k["Bx"].shape, state_t)  # (threads, B|1, G, L, N)
        dC_c = np.empty((nchunks,) + k["Cx"].shape, state_t)
        touched = (np.zeros(dB_c.shape[:3], np.uint8), np.zeros(dC_c.shape[:3], np.uint8))
    else:  # one copy per thread, summed below: (threads, B|1, G', L|1, N)
        dB_c = np.zeros((nchunks,) + k["Bx"].shape, state_t)
        dC_c = np.zeros((nchunks,) + k["Cx"].shape, state_t)
    dD_c = np.zeros((nchunks, dim), real)
    dbias_c = np.zeros((nchunks, dim), real)
    screen = np.empty(batch * dim, real)
    args = (_contiguous(dout, real), k["u"], k["delta"], k["A"], k["Bx"], k["Cx"],
            k["Dv"], k["z"], k["bias"], k["h0"], dlast, s.D is not None, s.z is not None,
            s.delta_bias is not None, s.delta_softplus, s.h0 is not None,
            dlast_state is not None, du, ddelta, dz, dh0, dA_c, dB_c, dC_c, dD_c, dbias_c,
            screen)
    if s.is_complex:
        _launch(_bwd_complex, *args, block)
    elif paired:
        _launch(_pairs.bwd_pairs_short if length < _spans.SPAN_BELOW else _pairs.bwd_pairs,
                *args, _pairs.chunk_unit(s), exp2_terms(real))
    elif tiled:
        _launch(_tiles.bwd_tiles_short if length < _spans.SPAN_BELOW else _tiles.bwd_tiles,
                *args, *touched, exp2_terms(real))
    elif length <= block:
        _launch(_bwd_real, *args, block, exp2_terms(real))
    else:
        shape = (batch * dim, -(-length // block), npad)
        given = starts is not None
        if given and starts.shape != shape:  # a forward that ran other blocks: a bug here
            raise RuntimeError(f"the forward kept chunk states of shape {starts.shape}, the "
                               f"backward's blocks need {shape}")
        _launch(_bwd_real_long, *args, block, starts if given else np.empty(shape, real),
                given, exp2_terms(real))  # not given: pass 1 of the kernel fills it

    def unlayout(Xc, shape, touched):  # the per-thread copies summed, in the argument's layout
        if paired:
            return Xc.reshape(shape)
        if tiled:  # N not padded: the touched units summed and laid out in one pass
            X = np.empty(Xc.shape[1:3] + (Xc.shape[4], Xc.shape[3]), state_t)
            _launch(_tiles.sum_copies, Xc, touched, X)
            return X.reshape(shape)
        X = Xc.sum(axis=0)
        if k["blocked"]:
            X = _from_blocks_of_16(X)
        X = X[..., :dstate]  # (B|1, G', L|1, N)
        return np.swapaxes(X, 2, 3).reshape(shape)  # (B|1, G', N, L|1) -> shape

    grads = {"u": du, "delta": ddelta, "A": dA_c.sum(axis=0)[:, :dstate],
             "B": unlayout(dB_c, s.B.shape, touched[0]),
             "C": unlayout(dC_c, s.C.shape, touched[1]),
             "D": dD_c.sum(axis=0) if s.D is not None else None,
             "z": dz if s.z is not None else None,
             "delta_bias": dbias_c.sum(axis=0) if s.delta_bias is not None else None,
             "h0": dh0[:, :, :dstate] if s.h0 is not None else None}
    return grads, screen


# ---------------------------------------------------------------------------
# public functions: the reference signatures
# ---------------------------------------------------------------------------

class SavedScan:
    """A forward scan kept for its backward (:func:`selective_scan_for_backward`).

    Holds the arguments as given (for the reference's error messages), what
    checking them learnt (a :class:`~ssm_ref.scan_args.ScanArgs`), the compute
    dtype the forward settled on and its kernel arrays, among them ``u``,
    ``delta`` and ``z`` as C-contiguous arrays of that dtype (a channels-last
    ``z`` is a copy: one (B, D, L) array more kept alive until the backward),
    and for rows longer than the backward's time block the state entering each
    block (``starts``, else None; :func:`_forward`).  Only
    :func:`selective_scan_backward_saved` reads it.
    """

    __slots__ = ("args", "s", "real", "k", "maybe_negative", "starts")

    def __init__(self, args, s, real, k, maybe_negative, starts=None):
        self.args, self.s, self.real, self.k = args, s, real, k
        self.maybe_negative, self.starts = maybe_negative, starts


def _scan(args, return_last_state, keep_starts=False):
    """:func:`selective_scan` on ``args`` (its first ten, as a tuple): ``(y, last state or
    None, SavedScan)``; ``keep_starts``: the forward keeps its backward's chunk states
    (:func:`_forward`)."""
    def reference_check():
        check_scan_args(*args)

    s = _validated(lambda: _check_structure(*args), reference_check)
    check_bool(return_last_state, "return_last_state")
    maybe_negative = _maybe_negative(s)
    real, k = _fitting_kernel_args(s, "forward")
    out, last, screen, starts = _forward(s, k, real, keep_starts)
    if _screen_failed(screen, maybe_negative):
        reference_check()  # raises the reference's error (non-finite input, negative step)
        if real == np.float32:  # valid input that float32 could not hold: again in float64
            real = np.dtype(np.float64)
            k = _kernel_args(s, real, "forward")
            out, last, _, starts = _forward(s, k, real, keep_starts)
    y = out.astype(s.out_dtype, copy=False)
    if return_last_state:
        last = last[:, :, :s.dstate].astype(s.state_dtype)  # (B, D, N): drop the padding
    return (y, last if return_last_state else None,
            SavedScan(args, s, real, k, maybe_negative, starts))


def _check_dout(s, dout, dlast_state):
    """``(dout, dlast_state)`` checked against the scan ``s``: (B, D, L) and (B, D, N)."""
    dout_ = as_array(dout, "dout", allow_complex=False, ndim=3, bfloat16=True)
    check_shape(dout_, "dout", (s.batch, s.dim, s.length))
    dlast = None
    if dlast_state is not None:
        dlast = as_array(dlast_state, "dlast_state", allow_complex=s.is_complex, ndim=3,
                         bfloat16=True)
        check_shape(dlast, "dlast_state", (s.batch, s.dim, s.dstate))
        check_finite(dlast, "dlast_state")
    return dout_, dlast


def _backward_kernel_args(saved):
    """The backward's kernel arrays from a forward's: the same arrays if both directions take
    one layout (:func:`_layout`), else the backward's, reusing the forward's ``u``, ``delta``
    and ``z``."""
    s, real, k = saved.s, saved.real, saved.k
    if _layout(s, real, "backward") == (k["paired"], k["tiled"], k["blocked"]):
        return k
    return _kernel_args(s, real, "backward", rows={name: k[name] for name in ("u", "delta", "z")})


def _scan_backward(dout, dlast_state, args, saved=None):
    """:func:`selective_scan_backward` of the scan ``args`` (its ten arguments, as a tuple),
    or with ``saved`` (a :class:`SavedScan` of them) starting from its checked arguments
    and kernel arrays."""
    def reference_check():
        ssm_ref.selective_scan_backward(dout, *args, dlast_state)

    if saved is None:
        def check():
            s = _check_structure(*args)
            return (s,) + _check_dout(s, dout, dlast_state)
        s, dout_, dlast_ = _validated(check, reference_check)
        maybe_negative = _maybe_negative(s)
        real, k = _fitting_kernel_args(s, "backward")
    else:
        s, maybe_negative, real = saved.s, saved.maybe_negative, saved.real
        dout_, dlast_ = _validated(lambda: _check_dout(s, dout, dlast_state), reference_check)
        k = _backward_kernel_args(saved)
    grads, screen = _backward(s, k, real, dout_, dlast_, None if saved is None else saved.starts)
    # the screen covers the per-row gradients; the shared ones are checked here
    shared_finite = all(np.isfinite(grads[name]).all() for name in ("A", "B", "C", "D",
                                                                     "delta_bias")
                        if grads[name] is not None)
    if _screen_failed(screen, maybe_negative) or not shared_finite:
        reference_check()  # raises the reference's error (non-finite input, negative step)
        if real == np.float32:  # valid input that float32 could not hold: again in float64
            real = np.dtype(np.float64)
            grads, _ = _backward(s, _kernel_args(s, real, "backward"), real, dout_, dlast_)
    for name, grad in grads.items():  # each argument's own dtype and layout (real part, or
        if grad is not None:          # interleaved again for an interleaved B/C)
            grads[name] = np.ascontiguousarray(s.grad_as_given(name, grad))
    return grads


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, return_last_state=False, h0=None):
    """Numba version of :func:`ssm_ref.selective_scan` (same signature and result).

    Parameters, returns and errors are those of :func:`ssm_ref.selective_scan`.
    float32 input is computed in float32, other real input in float64,
    complex A in complex128; the output dtype is ``u``'s.

    Notes
    -----
    Implements ``eq-selective-delta``, ``eq-selective-disc``,
    ``eq-selective-recurrence`` and ``eq-selective-output``, parallel over the
    (batch, channel) rows with a vectorized exponential (``fast._fastexp``).
    Memory: O(B·D·L) for the output and O(L + N) scratch per row.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_cpu import selective_scan
    >>> u = np.ones((1, 1, 3))
    >>> y, h = selective_scan(u, 0.5 * np.ones((1, 1, 3)), [[-1.0]], [[1.0]], [[1.0]],
    ...                       return_last_state=True)
    >>> y
    array([[[0.5       , 0.80326533, 0.98720505]]])
    """
    y, last, _ = _scan((u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0),
                       return_last_state)
    return (y, last) if return_last_state else y


def selective_scan_backward(dout, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, h0=None, dlast_state=None):
    """Numba version of :func:`ssm_ref.selective_scan_backward` (same result).

    Returns the dict of the nine gradients keyed by argument name, each in
    its argument's shape and dtype (``None`` for an optional argument not
    given).

    Notes
    -----
    Implements ``eq-selective-backward``.  Each (batch, channel) row reruns
    its forward pass keeping its decay factors and states in per-thread
    scratch, then runs the reverse scan; rows longer than T steps go through
    both in blocks of T steps, all rows of a thread per block, recomputing
    each block's records from its saved state.  Shared gradients (A, B, C, D,
    delta_bias) are summed in per-thread copies.  Memory O(threads · T · N)
    scratch, O(B · D · (L / T) · N) saved states when L > T, plus
    per-thread copies of dB and dC, never (B, D, L, N).

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_cpu import selective_scan_backward
    >>> g = selective_scan_backward(np.array([[[1.0, 0.0, 0.0]]]), np.ones((1, 1, 3)),
    ...                             0.5 * np.ones((1, 1, 3)), [[-1.0]], [[1.0]], [[1.0]])
    >>> g["u"]
    array([[[0.5, 0. , 0. ]]])
    """
    return _scan_backward(dout, dlast_state, (u, delta, A, B, C, D, z, delta_bias,
                                              delta_softplus, h0))


def selective_scan_for_backward(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                delta_softplus=False, return_last_state=False, h0=None):
    """:func:`selective_scan`, keeping what its backward needs: ``(y, last_state or None,
    saved)``.

    ``saved`` (a :class:`SavedScan`) goes to :func:`selective_scan_backward_saved`,
    which then skips what :func:`selective_scan_backward` would do again: the
    checks of the arguments, the copies of strided ``u``, ``delta`` and ``z``,
    the layouts of B and C (where the backward's kernel takes the forward's)
    and the choice of the compute dtype.  As the official package's autograd
    function keeps its tensors for the backward (``ctx.save_for_backward``);
    the blocks reach it through :func:`attach_saved_scan`.

    Rows longer than the backward's time block (16384 steps at N = 16 in
    float32 on AMD's Zen) also keep the state entering each block, as the
    official CUDA forward keeps its chunk states (``x``, every 2048 steps):
    the backward then starts its blocks from them instead of carrying every
    row's state through the sequence again first (about a sixth of its time
    at L = 65536; chapter 11, "Throughput against L and N").  They cost
    B·D·N numbers per block.  ``y`` and the last state are
    :func:`selective_scan`'s, bit for bit.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_cpu import selective_scan_for_backward, selective_scan_backward_saved
    >>> u, delta = np.ones((1, 1, 3)), 0.5 * np.ones((1, 1, 3))
    >>> y, _, saved = selective_scan_for_backward(u, delta, [[-1.0]], [[1.0]], [[1.0]])
    >>> selective_scan_backward_saved(np.array([[[1.0, 0.0, 0.0]]]), saved)["u"]
    array([[[0.5, 0. , 0. ]]])
    """
    return _scan((u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0), return_last_state,
                 keep_starts=True)


def selective_scan_backward_saved(dout, saved, dlast_state=None):
    """:func:`selective_scan_backward` of the scan that
    :func:`selective_scan_for_backward` ran and ``saved``: the same gradients, bit for bit,
    except where the forward kept chunk states from channel tiles (float32 rows longer than
    one backward block, B and C shared by groups of 16 channels or more): the tiles round
    their update's FMA the other way (``fast.numba_tiles._tile_step``), so the backward
    starts its blocks from states a rounding away from those it would carry itself, and
    the gradients agree to rounding.

    The arguments must not have changed since the forward: the backward reads
    the forward's kernel arrays, which are the arguments themselves where they
    were C-contiguous in the compute dtype (their copies otherwise).

    Raises
    ------
    TypeError
        ``saved`` is not a :class:`SavedScan`.
    ValueError, TypeError
        ``dout`` or ``dlast_state`` not (B, D, L) / (B, D, N), not finite, or
        of a wrong type (as :func:`selective_scan_backward`).
    """
    if not isinstance(saved, SavedScan):
        raise TypeError(f"Parameter saved is a {type(saved).__name__}, but a SavedScan from "
                        "fast.numba_cpu.selective_scan_for_backward was expected")
    return _scan_backward(dout, dlast_state, saved.args, saved)


def attach_saved_scan(scan_fn, scan_backward_fn):
    """Give a pair of Numba scan functions the twins that run them as one forward and its
    backward; returns the pair.

    ``scan_fn`` gets the attribute ``for_backward``
    (:func:`selective_scan_for_backward`) and ``scan_backward_fn`` the attribute
    ``from_saved`` (:func:`selective_scan_backward_saved`), which
    :func:`ssm_ref.kept_scan.scan_keeping` and
    :func:`~ssm_ref.kept_scan.scan_backward_kept` look for: the fused inner path,
    VMamba's SS2D and PlainMamba then keep the scan's checked arguments and kernel
    arrays from the forward, and the backward starts from them instead of checking
    and laying out the same arrays again.  :func:`fast.scan_functions` attaches them to
    the ``"numba"`` pair; a pair without them (the benchmarks' null scan) runs as given.

    Examples
    --------
    >>> import functools
    >>> fwd, bwd = attach_saved_scan(functools.partial(selective_scan),
    ...                              functools.partial(selective_scan_backward))
    >>> fwd.for_backward.__name__, bwd.from_saved.__name__
    ('selective_scan_for_backward', 'selective_scan_backward_saved')
    """
    scan_fn.for_backward = selective_scan_for_backward
    scan_backward_fn.from_saved = selective_scan_backward_saved
    return scan_fn, scan_backward_fn


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None):
    """Numba version of :func:`ssm_ref.selective_state_update` (same signature and result).

    Writes the new state into ``state`` in place and returns ``out``; both
    layouts (single-head, multi-head) and ``state_batch_indices``, as the
    reference.

    Notes
    -----
    Implements ``eq-selective-disc``, ``eq-selective-recurrence`` and
    ``eq-selective-output`` for one time step, parallel over (batch,
    channel).  float32 (and bfloat16, float16) ``x`` is computed in float32,
    anything else in float64, complex A in complex128; where float32 cannot
    hold an argument given wider (``dt = 1e300`` in float64) or an
    intermediate overflows while the inputs were finite, the step is
    computed again in float64, as the reference computes it.  The state is
    written only once the result is known to be finite (or float64).

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_cpu import selective_state_update
    >>> h = np.zeros((1, 1, 1))
    >>> for u_t in [1.0, 1.0, 1.0]:
    ...     y = selective_state_update(h, [[u_t]], [[0.5]], [[-1.0]], [[1.0]], [[1.0]])
    >>> y, h
    (array([[0.98720505]]), array([[[0.98720505]]]))
    """
    q = check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                        state_batch_indices, in_place=True)  # the reference's checks
    y, h, valid = _state_step(q)
    write_state(q, h, valid)
    return y.reshape(q.x.shape).astype(q.x.dtype, copy=False)


def selective_state_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                         dt_softplus=False):
    """Numba version of :func:`ssm_ref.selective_state_step`: returns ``(y, new_state)``.

    ``state`` is not modified.  Computed as :func:`selective_state_update`.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_cpu import selective_state_step
    >>> h = np.zeros((1, 1, 1))
    >>> for u_t in [1.0, 1.0, 1.0]:
    ...     y, h = selective_state_step(h, [[u_t]], [[0.5]], [[-1.0]], [[1.0]], [[1.0]])
    >>> y
    array([[0.98720505]])
    """
    q = check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    y, h, _ = _state_step(q)
    return (y.reshape(q.x.shape).astype(q.x.dtype, copy=False),
            h.reshape(q.state.shape).astype(q.new_state_dtype, copy=False))


def _step_arrays(q, valid, real):
    """The decoding-step kernel's arrays in ``real`` (complex128 for complex A), flat layout.

    Only the ``valid`` batch entries (all when None), and their state rows;
    1-element dummies for the optional arguments not given.
    """
    state_t = np.complex128 if q.is_complex else real

    def take(X):
        return X if valid is None else X[valid]

    def arr(name, dtype, dummy_ndim, per_batch):
        X = q.flat(name)
        if X is None:
            return np.zeros((1,) * dummy_ndim, real)
        return np.ascontiguousarray(take(X) if per_batch else X, dtype=dtype)

    state = q.flat("state")  # (S, D, N)
    rows = state if valid is None else state[q.indices[valid]]  # (n, D, N)
    return dict(state=np.ascontiguousarray(rows, dtype=state_t),
                x=arr("x", real, 2, True), dt=arr("dt", real, 2, True),
                A=arr("A", state_t, 2, False), Bx=arr("B", state_t, 3, True),
                Cx=arr("C", state_t, 3, True), Dv=arr("D", real, 1, False),
                z=arr("z", real, 2, True), bias=arr("dt_bias", real, 1, False))


def _run_step(q, k, real):
    """Launch the decoding-step kernel on the arrays ``k``: ``(y (n, D), h (n, D, N))``."""
    n = k["state"].shape[0]
    y = np.empty((n, q.dim), real)  # (n, D)
    h = np.empty((n, q.dim, q.dstate), np.complex128 if q.is_complex else real)  # (n, D, N)
    if n:
        _launch(_update_complex if q.is_complex else _update_real,
                k["state"], k["x"], k["dt"], k["A"], k["Bx"], k["Cx"], k["Dv"], k["z"],
                k["bias"], q.D is not None, q.z is not None, q.dt_bias is not None,
                q.dt_softplus, y, h)
    return y, h


def _all_finite(arrays):
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _state_step(q):
    """The step on checked arguments (a StepArgs): ``(y (B, D), h (n, D, N), valid)``.

    As :func:`ssm_ref.selective._state_step`: ``h`` holds the new states of the
    ``valid`` batch entries (all when None), padding entries get ``y = 0``.
    float32 is used unless it cannot hold the (finite, checked) inputs or
    the result: then the step runs again in float64 (the mixed-precision
    rule of the scan, see "Precision" in the module docstring).
    """
    valid = q.valid()
    real = np.dtype(np.float64) if q.is_complex else _compute_dtype(q.x.dtype)
    with np.errstate(over="ignore"):  # a float64 argument beyond float32: seen just below
        k = _step_arrays(q, valid, real)
    if real == np.float32 and not _all_finite(k.values()):
        real = np.dtype(np.float64)  # an argument given wider than float32 does not fit it
        k = _step_arrays(q, valid, real)
    y, h = _run_step(q, k, real)
    if real == np.float32 and not _all_finite((y, h)):
        real = np.dtype(np.float64)  # valid input float32 could not hold: again in float64
        y, h = _run_step(q, _step_arrays(q, valid, real), real)
    if valid is not None:  # padding entries: output 0, no state row
        y_all = np.zeros((q.batch, q.dim), real)
        y_all[valid] = y
        y = y_all
    return y, h, valid


# the span helpers and the pair and tile kernels import this module's row helpers, so they
# are imported last
from . import _spans  # noqa: E402
from . import numba_pairs as _pairs  # noqa: E402
from . import numba_tiles as _tiles  # noqa: E402
