"""The hardware-aware selective scan in Numba-CUDA (forward, backward, decoding step).

Glossary
--------
B       batch size (``Bsz`` in code, where the matrix ``B`` is also in scope)
L       sequence length
D       channels (``nD`` in code; the skip vector is ``Dv``)
N       state size
G       groups of B/C: channel d uses group ``d // (D // G)``
delta   step size Δ (B, D, L); ``dt`` after ``delta_bias`` and softplus
A       (D, N) real diagonal state matrix, one row per channel
B, C    input and output matrices: constant (D, N), variable (B, N, L) or
        grouped (B, G, N, L); inside the kernels always viewed as 4-D
        (Bb, G, N, Lb) with Bb in {1, B} and Lb in {1, L}
        (:meth:`ssm_ref.scan_args.BCForm.view_shape`)
Ā, B̄u   ``exp(dt·A)`` and ``dt·B·u`` (ZOH for A, Euler for B, as Mamba)
T       threads per block; ``items`` = chunk_size // T time steps per thread

The algorithm is the hardware-aware scan of Gu and Dao (2023, arXiv:2312.00752,
section 3.3 and appendix D), written for Numba-CUDA:

* one thread block per (batch, channel) row; the block walks the sequence in
  chunks of ``chunk_size`` time steps, each thread owning ``items`` consecutive
  steps of the chunk;
* per chunk the threads read u, delta (and z) once from global memory into
  registers and discretize there (softplus, ``exp(dt·A)``, ``dt·B·u``);
* for each state index n, a thread folds its own steps into one pair
  (a, b) of the linear recurrence h -> a·h + b, the block runs a Hillis-Steele
  scan of those pairs in shared memory (operator
  ``(a1, b1)∘(a2, b2) = (a2·a1, a2·b1 + b2)``, book label ``eq-scan-op``),
  and the state carried in from the previous chunk enters as the first element;
* y_t = <C_t, h_t> is summed over n in registers; D·u and the SiLU gate are
  applied on chip; only y (B, D, L) and the state at the end of every chunk
  (B, D, n_chunks, N) go back to global memory -- never the (B, D, L, N) states.

The backward pass recomputes the states of one chunk at a time from those
per-chunk states and runs the reverse recurrence of the state gradient
(book label ``eq-selective-backward``) with the same block scan, right to left.

Arrays: CuPy arrays in give CuPy arrays out (no host copy); NumPy arrays are
copied to the device and the results copied back (this is how the tests run
on Numba's CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``); any other object with
``__cuda_array_interface__`` is wrapped without a copy and results come back
as Numba device arrays (PyTorch CUDA tensors take this path); a CUDA object that
speaks only DLPack goes through ``cupy.from_dlpack`` when CuPy is installed.

Validation: NumPy input goes through the reference's own validator
(:func:`ssm_ref.scan_args.check_scan_args`), so errors are the reference's; the
kernels read the :class:`~ssm_ref.scan_args.ScanArgs` it describes.
Device input gets the shape and dtype checks only; the value checks (finite,
Re(A) <= 0, non-negative steps) would each cost a reduction and a
synchronisation on the device, and are left out.

Only real ``A`` is supported here; complex ``A`` raises ``NotImplementedError``
(the ``ref`` and ``numba`` backends have it). Computation happens in the input
dtype (float32 or float64; ``ml_dtypes.bfloat16`` host arrays in float32, the
results cast back to bfloat16, as the official kernels compute bfloat16 in
float32 registers); under the simulator, scalar ``math`` functions run
in Python floats, so simulated float32 is slightly more accurate than a GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from ssm_ref._validation import (as_array, check_bool, check_finite, check_positive_int,
                                 check_shape)
from ssm_ref.scan_args import (ARRAY_NAMES, BCForm, ScanArgs, check_scan_args,
                               check_step_args)
from ssm_ref._xp import is_cupy as _is_cupy

try:  # numba-cuda imports fine without a GPU; only launching fails
    from numba import cuda
    from numba.core import config as _numba_config
    _IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - numba without its CUDA target
    cuda = None
    _numba_config = None
    _IMPORT_ERROR = exc

__all__ = ["status", "selective_scan", "selective_scan_backward", "selective_state_update",
           "selective_state_step"]

#: defaults on a real GPU (the official kernel uses 128 threads x 8-16 items)
GPU_THREADS, GPU_CHUNK = 128, 1024
#: defaults on the simulator, where every thread is a Python thread
SIM_THREADS, SIM_CHUNK = 8, 16
SOFTPLUS_THRESHOLD = 20.0  # softplus(x) = x above it, as torch.nn.functional.softplus


# --------------------------------------------------------------------------- status


def _simulator_on():
    return _numba_config is not None and bool(_numba_config.ENABLE_CUDASIM)


def status():
    """Say whether this backend can run here, and why (not).

    Returns
    -------
    available : bool
        True on a real CUDA GPU or under Numba's CUDA simulator.
    reason : str
        Which of the two, or why neither (no numba-cuda, no driver, no device).

    Examples
    --------
    >>> ok, reason = status()
    >>> isinstance(ok, bool) and isinstance(reason, str)
    True
    """
    if cuda is None:
        return False, f"numba.cuda cannot be imported ({_IMPORT_ERROR}); install numba-cuda"
    if _simulator_on():
        return True, ("Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct results, "
                      "about 1000x slower than a GPU")
    try:
        if cuda.is_available():
            dev = cuda.get_current_device()
            name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
            return True, f"CUDA GPU: {name} (compute capability {dev.compute_capability})"
    except Exception as exc:  # a broken driver: report it, do not raise
        return False, f"CUDA driver error: {exc}"
    try:
        cuda.current_context()
    except Exception as exc:
        first = " ".join(str(exc).split())
        return False, f"no usable CUDA GPU: {first}"
    return False, "no CUDA GPU detected by numba-cuda"


def _require_cuda():
    ok, reason = status()
    if not ok:
        raise RuntimeError(f"the cuda backend is not available here: {reason}")


def gpu_launch(length):
    """The default ``(threads, chunk_size)`` on a GPU for sequences of ``length`` steps.

    Eight steps per thread, as the official kernel; 128 threads, unless the
    sequence is short (the tiny vision models have 17-65 tokens): then the
    smallest power of two from 32 (one warp) whose chunk covers it, so that a
    block of idle threads does not pay the block scan's barriers for nothing.

    Examples
    --------
    >>> gpu_launch(17), gpu_launch(300), gpu_launch(2500)
    ((32, 256), (64, 512), (128, 1024))
    """
    items = GPU_CHUNK // GPU_THREADS
    need = -(-length // items)  # threads that would have work in one chunk
    threads = 32
    while threads < min(need, GPU_THREADS):
        threads *= 2
    return threads, threads * items


def _defaults(chunk_size, threads, length):
    sim = _simulator_on()
    if threads is None and chunk_size is None and not sim:
        threads, chunk_size = gpu_launch(length)
    if threads is None:
        threads = SIM_THREADS if sim else GPU_THREADS
    if chunk_size is None:
        chunk_size = max(SIM_CHUNK if sim else GPU_CHUNK, threads)
    threads = check_positive_int(threads, "threads")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if threads > 1024 or threads & (threads - 1):
        raise ValueError(f"Parameter threads = {threads} must be a power of two <= 1024")
    if chunk_size % threads:
        raise ValueError(f"Parameter chunk_size = {chunk_size} must be a multiple of "
                         f"threads = {threads} (each thread owns chunk_size // threads steps)")
    return chunk_size, threads


# --------------------------------------------------------------------------- arrays


def _cupy():
    """The cupy module, or None when it is not installed (imported lazily)."""
    try:
        import cupy
    except Exception:
        return None
    return cupy


def _is_device(x):
    """True for arrays that already live on the GPU (or the simulator's device)."""
    if isinstance(x, np.ndarray):
        return False
    return (_is_cupy(x) or bool(getattr(x, "__cuda_ndarray__", False))
            or _has_cai(x) or _on_cuda_dlpack(x))


def _has_cai(x):
    """True for objects exporting ``__cuda_array_interface__`` (getattr may raise:
    PyTorch refuses it for tensors that require grad)."""
    try:
        return getattr(x, "__cuda_array_interface__", None) is not None
    except Exception:
        return False


def _on_cuda_dlpack(x):
    """True for a DLPack object living on a CUDA device (kDLCUDA=2, managed=13)."""
    try:
        return hasattr(x, "__dlpack__") and x.__dlpack_device__()[0] in (2, 13)
    except Exception:
        return False


def _kind(u):
    """Where the caller's data lives, which decides what comes back.

    'cupy' (CuPy in and out), 'numba' (Numba device arrays and other objects with
    ``__cuda_array_interface__``: wrapped without a copy, Numba device arrays out),
    'dlpack' (a CUDA DLPack object: through CuPy) or 'numpy' (copied in and out).
    """
    if _is_cupy(u):
        return "cupy"
    if isinstance(u, np.ndarray):
        return "numpy"
    if getattr(u, "__cuda_ndarray__", False) or _has_cai(u):
        return "numba"
    if _on_cuda_dlpack(u):
        return "dlpack"
    return "numpy"


class _Mover:
    """Moves the caller's arrays to the device and results back, by kind of ``u``."""

    def __init__(self, u):
        self.kind = _kind(u)
        self.cp = _cupy() if self.kind in ("cupy", "dlpack") else None
        if self.kind == "dlpack":
            if self.cp is None:
                raise TypeError("Parameter u is a DLPack CUDA object; the cuda backend "
                                "needs CuPy (cupy.from_dlpack) to take it: install cupy")
            self.kind = "cupy"
        self.stream = None
        if self.kind == "cupy":  # launch where CuPy queues its work: no host wait, in order
            ptr = self.cp.cuda.get_current_stream().ptr
            self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()

    def launch(self, kernel, blocks, threads):
        """``kernel[blocks, threads]``, on CuPy's current stream for CuPy arrays.

        The kernels then run in order with the CuPy operations before and after
        them, so CuPy arrays are wrapped without a synchronisation
        (``as_cuda_array(sync=False)``) and temporaries may return to CuPy's
        stream-ordered memory pool as soon as the call returns.
        """
        if self.stream is None:
            return kernel[blocks, threads]
        return kernel[blocks, threads, self.stream]

    def _wrap_cupy(self, c):
        """A Numba view of the CuPy array ``c`` (no copy, no host wait; see :meth:`launch`)."""
        return cuda.as_cuda_array(c, sync=False)

    def adopt(self, x, name):
        """Turn a DLPack-only CUDA object into CuPy (no copy); leave the rest."""
        if x is None or isinstance(x, np.ndarray) or _is_cupy(x) \
                or getattr(x, "__cuda_ndarray__", False) \
                or _has_cai(x) or not _on_cuda_dlpack(x):
            return x
        cp = self.cp or _cupy()
        if cp is None:
            raise TypeError(f"Parameter {name} is a DLPack CUDA object; the cuda backend "
                            "needs CuPy (cupy.from_dlpack) to take it: install cupy")
        return cp.from_dlpack(x)

    def device(self, x, name, dtype, shape=None):
        """``x`` as a Numba device array of ``dtype``, viewed as ``shape`` if given.

        Device arrays are wrapped without a copy (CuPy casts on the device when the
        dtype differs, and makes strided views contiguous so that a warp's loads
        coalesce); host arrays are copied to the device once.
        """
        if _is_cupy(x):
            x = self.cp.ascontiguousarray(x.astype(dtype, copy=False))
            if shape is not None:
                x = x.reshape(shape)
            return self._wrap_cupy(x)
        if getattr(x, "__cuda_ndarray__", False) or _has_cai(x):
            arr = x if getattr(x, "__cuda_ndarray__", False) else cuda.as_cuda_array(x)
            if arr.dtype != dtype:
                raise TypeError(f"Parameter {name} has dtype {arr.dtype} but the cuda backend "
                                f"computes in u's dtype {np.dtype(dtype)}; cast it first "
                                "(CuPy arrays are cast on the device)")
            if shape is not None:
                try:
                    arr = arr.reshape(shape)
                except NotImplementedError as exc:
                    raise ValueError(f"Parameter {name} must be contiguous on the device "
                                     "to be viewed as (B, G, N, L)") from exc
            return arr
        x = np.ascontiguousarray(np.asarray(x, dtype=dtype))
        if shape is not None:
            x = x.reshape(shape)
        if self.kind == "cupy":
            return self._wrap_cupy(self.cp.asarray(x))
        return cuda.to_device(x)

    def dummy(self, ndim, dtype):
        """A 1-element array standing in for an absent optional argument."""
        if self.kind == "cupy":  # made on the device: no upload at every call
            return self._wrap_cupy(self.cp.zeros((1,) * ndim, dtype))
        return self.device(np.zeros((1,) * ndim, dtype), "dummy", dtype)

    def empty(self, shape, dtype):
        """(device view, container) of an uninitialised output."""
        if self.kind == "cupy":
            c = self.cp.empty(shape, dtype)
            return self._wrap_cupy(c), c
        d = cuda.device_array(shape, dtype)
        return d, d

    def zeros(self, shape, dtype):
        """(device view, container) of an output filled with zeros."""
        if self.kind == "cupy":
            c = self.cp.zeros(shape, dtype)
            return self._wrap_cupy(c), c
        d = cuda.to_device(np.zeros(shape, dtype))
        return d, d

    def copy(self, x, name, dtype):
        """(device view, container) of a fresh device copy of ``x`` (it gets written)."""
        if self.kind == "cupy":
            c = self.cp.array(x if _is_cupy(x) else np.asarray(x), dtype=dtype)
            return self._wrap_cupy(c), c
        src = self.device(x, name, dtype)
        d = cuda.device_array(src.shape, dtype)
        d.copy_to_device(src)
        return d, d

    def back(self, container, dtype=None):
        """A result in the caller's kind of array (cast to ``dtype`` on host/CuPy)."""
        if container is None:
            return None
        if self.kind == "numpy":
            out = container.copy_to_host()
            return out if dtype is None else out.astype(dtype, copy=False)
        if self.kind == "cupy" and dtype is not None:
            return container.astype(dtype, copy=False)
        return container


# --------------------------------------------------------------------------- validation


def _shape_of(x, name):
    """(array, shape, dtype): host input through ``as_array``; device arrays untouched."""
    if x is None:
        raise TypeError(f"Parameter {name} is None but an array was expected")
    if _is_device(x):
        dt = np.dtype(str(x.dtype).replace("torch.", ""))
        if dt.kind not in "fc":
            raise TypeError(f"Parameter {name} has dtype {dt} but a real or complex "
                            "floating-point array was expected")
        return x, tuple(x.shape), dt
    arr = as_array(x, name, bfloat16=True)  # bfloat16 is computed in float32
    return arr, arr.shape, arr.dtype


def _validate_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0,
                   dout=None, dlast_state=None):
    """Check every argument; return ``(ScanArgs, dout, dlast_state)``, arrays as given.

    Host (NumPy) inputs first go through the reference's own validator,
    :func:`ssm_ref.scan_args.check_scan_args`, so that both backends accept and
    refuse exactly the same inputs with the same messages (shapes, finiteness,
    Re(A) > 0, negative steps). Device inputs get the shape and dtype checks only:
    value checks would cost a device reduction and a synchronisation.
    """
    given = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
             "delta_bias": delta_bias, "h0": h0, "dout": dout, "dlast_state": dlast_state}
    if not any(_is_device(x) for x in given.values() if x is not None):
        check_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    check_bool(delta_softplus, "delta_softplus")
    arrs, shapes, dtypes = {}, {}, {}
    for name, x in given.items():
        if x is not None or name in ("u", "delta", "A", "B", "C"):
            arrs[name], shapes[name], dtypes[name] = _shape_of(x, name)
        else:
            arrs[name] = None
    su = shapes["u"]
    if len(su) != 3:
        raise ValueError(f"Parameter u has shape {su} ({len(su)}-D) but should be 3-D")
    dtype = dtypes["u"]
    if dtype not in (np.float32, np.float64) and dtype.name != "bfloat16":
        raise TypeError(f"Parameter u has dtype {dtype}; the cuda backend computes in "
                        "float32 or float64 (bfloat16 in float32)")
    Bsz, nD, L = su
    if dtypes["A"].kind == "c":
        raise NotImplementedError("Parameter A is complex; the cuda backend supports real A "
                                  "only (backends 'numba' and 'ref' take complex A)")
    for name in dtypes:
        if dtypes[name].kind == "c":
            raise TypeError(f"Parameter {name} is complex ({dtypes[name]}) but A is real")
    check_shape(arrs["delta"], "delta", su)
    if len(shapes["A"]) != 2:
        raise ValueError(f"Parameter A has shape {shapes['A']} but should be ({nD}, N)")
    check_shape(arrs["A"], "A", (nD, None))
    N = shapes["A"][1]
    forms = {name: BCForm.of(arrs[name], dtypes[name], name, Bsz, nD, L, N) for name in "BC"}
    for name, want in (("D", (nD,)), ("z", su), ("delta_bias", (nD,)), ("h0", (Bsz, nD, N)),
                       ("dout", su), ("dlast_state", (Bsz, nD, N))):
        if arrs[name] is not None:
            check_shape(arrs[name], name, want)
            if isinstance(arrs[name], np.ndarray):
                check_finite(arrs[name], name)
    s = ScanArgs(**{name: arrs[name] for name in ARRAY_NAMES},
                 delta_softplus=bool(delta_softplus), form_B=forms["B"], form_C=forms["C"],
                 batch=Bsz, dim=nD, length=L, dstate=N, is_complex=False, xp=None,
                 dtypes={name: dtypes[name] for name in ARRAY_NAMES if name in dtypes})
    return s, arrs["dout"], arrs["dlast_state"]


# --------------------------------------------------------------------------- device code

if cuda is not None:

    @cuda.jit(device=True)
    def _softplus(x):
        """softplus(x) = log(1 + e^x), linear above the threshold 20."""
        if x > SOFTPLUS_THRESHOLD:
            return x
        return math.log1p(math.exp(x))

    @cuda.jit(device=True)
    def _sigmoid(x, one):
        """1 / (1 + e^-x), with ``one`` of x's type so float32 stays float32."""
        return one / (one + math.exp(-x))

    @cuda.jit(device=True)
    def _block_scan_forward(sh_a, sh_b, tid, nthreads):
        """Inclusive Hillis-Steele scan of (a, b) pairs, left to right, in shared memory.

        After it, (sh_a[i], sh_b[i]) is the composition of pairs 0..i, i.e. the map
        h -> sh_a[i]·h + sh_b[i] from the state before thread 0 to the state after
        thread i.  log2(T) steps, each read -> barrier -> write -> barrier.
        """
        # [book:block-scan]
        offset = 1
        while offset < nthreads:
            pa = sh_a[tid]
            pb = sh_b[tid]
            if tid >= offset:  # combine with the element `offset` to the left
                pa = sh_a[tid - offset]
                pb = sh_b[tid - offset]
            cuda.syncthreads()
            if tid >= offset:  # later ∘ earlier: (a2·a1, a2·b1 + b2)
                sh_b[tid] = sh_a[tid] * pb + sh_b[tid]
                sh_a[tid] = sh_a[tid] * pa
            cuda.syncthreads()
            offset *= 2
        # [/book:block-scan]

    @cuda.jit(device=True, inline="always")
    def _scan_to_thread(sh_a, sh_b, agg_a, agg_b, h_in, tid, nthreads):
        """The state before this thread's first step: every thread's folded pair goes to
        shared memory, the block scans them, and the pairs of the threads to its left
        (the exclusive prefix) are applied to the state carried into the chunk."""
        # [book:scan-to-thread]
        sh_a[tid] = agg_a
        sh_b[tid] = agg_b
        cuda.syncthreads()
        _block_scan_forward(sh_a, sh_b, tid, nthreads)
        h = h_in
        if tid > 0:  # the composition of threads 0 .. tid-1, applied to h_in
            h = sh_a[tid - 1] * h_in + sh_b[tid - 1]
        return h
        # [/book:scan-to-thread]

    @cuda.jit(device=True)
    def _block_scan_reverse(sh_a, sh_b, tid, nthreads):
        """Inclusive Hillis-Steele scan right to left (a suffix scan).

        Element i maps the value after thread i's last step to the value before its
        first; after the scan, (sh_a[i], sh_b[i]) covers threads i..T-1.
        """
        offset = 1
        while offset < nthreads:
            pa = sh_a[tid]
            pb = sh_b[tid]
            if tid + offset < nthreads:  # combine with the element `offset` to the right
                pa = sh_a[tid + offset]
                pb = sh_b[tid + offset]
            cuda.syncthreads()
            if tid + offset < nthreads:  # q_before = a_i·(a_r·q + b_r) + b_i
                sh_b[tid] = sh_a[tid] * pb + sh_b[tid]
                sh_a[tid] = sh_a[tid] * pa
            cuda.syncthreads()
            offset *= 2

    @cuda.jit(device=True)
    def _block_sum3(s1, s2, s3, tid, nthreads):
        """Tree reduction of three shared arrays; the sums end in s1[0], s2[0], s3[0]."""
        cuda.syncthreads()
        stride = nthreads // 2
        while stride > 0:
            if tid < stride:
                s1[tid] += s1[tid + stride]
                s2[tid] += s2[tid + stride]
                s3[tid] += s3[tid + stride]
            cuda.syncthreads()
            stride //= 2

    # The forward kernel and the backward kernel's recomputation share these
    # steps; inline="always" splices them in at compile time, so the kernels compile
    # as if they were written in place (local arrays stay in registers).
    @cuda.jit(device=True, inline="always")
    def _block_row(u, A, states):
        """This block's row and sizes; one block per (batch, channel) row.

        Returns ``(b, d, nD, L, N, n_chunks, tid)``: the row, the channels,
        length and state size, the chunks of ``states`` and this thread's index.
        """
        nD = u.shape[1]
        b = cuda.blockIdx.x // nD
        d = cuda.blockIdx.x % nD
        return b, d, nD, u.shape[2], A.shape[1], states.shape[2], cuda.threadIdx.x

    @cuda.jit(device=True, inline="always")
    def _bc_row(Bm, Cm, b, d, nD):
        """Where row (b, d) reads B and C in their 4-D views (Bb, G, N, Lb).

        Returns ``(bB, gB, bC, gC, varB, varC)``: batch and group index of B
        and of C, and whether each varies along L.
        """
        bB = b if Bm.shape[0] > 1 else 0
        gB = d // (nD // Bm.shape[1])
        bC = b if Cm.shape[0] > 1 else 0
        gC = d // (nD // Cm.shape[1])
        return bB, gB, bC, gC, Bm.shape[3] > 1, Cm.shape[3] > 1

    @cuda.jit(device=True, inline="always")
    def _step_delta(delta, dbias, b, d, t, has_bias, softplus):
        """Δ_t of row (b, d): delta (+ delta_bias), through softplus when asked."""
        x = delta[b, d, t]
        if has_bias:
            x += dbias[d]
        return _softplus(x) if softplus else x

    @cuda.jit(device=True, inline="always")
    def _carried_state(states, h0, b, d, c, n, has_h0, zero):
        """h_n entering chunk c: the state at the end of chunk c - 1, else h0 (or zero)."""
        if c > 0:
            return states[b, d, c - 1, n]
        if has_h0:
            return h0[b, d, n]
        return zero

    @cuda.jit(device=True, inline="always")
    def _discretize_and_fold(a_r, bu_r, dt_r, u_r, Bm, bB, gB, n, varB, a_dn, t0, L, items,
                             one, zero):
        """Fill this thread's Ā_t, B̄u_t (state n) and fold them into one pair.

        Ā_t = exp(Δ_t·A) and B̄u_t = Δ_t·B_t·u_t (eq-selective-disc; 1 and 0
        past the end); returns ``(agg_a, agg_b)`` with h_out = agg_a·h_in + agg_b.
        """
        # [book:discretize-and-fold]
        agg_a = one
        agg_b = zero
        for i in range(items):
            t = t0 + i
            a_r[i] = math.exp(dt_r[i] * a_dn)
            bu_r[i] = zero
            if t < L:
                bu_r[i] = dt_r[i] * Bm[bB, gB, n, t if varB else 0] * u_r[i]
            agg_b = a_r[i] * agg_b + bu_r[i]
            agg_a = a_r[i] * agg_a
        return agg_a, agg_b
        # [/book:discretize-and-fold]


@functools.lru_cache(maxsize=None)
def _forward_kernel(dtype_name, threads, items):
    """Compile (once per dtype, T, items) the forward kernel; constants are baked in."""
    # [book:forward-kernel]
    real = np.dtype(dtype_name).type  # np.float32 or np.float64: the compute type
    chunk = threads * items

    @cuda.jit
    def forward(u, delta, A, Bm, Cm, Dv, z, dbias, h0, out, states,
                has_D, has_z, has_bias, softplus, has_h0):
        b, d, nD, L, N, n_chunks, tid = _block_row(u, A, states)  # one block per row (b, d)
        bB, gB, bC, gC, varB, varC = _bc_row(Bm, Cm, b, d, nD)

        sh_a = cuda.shared.array(threads, real)  # scan workspace: Ā products
        sh_b = cuda.shared.array(threads, real)  # scan workspace: accumulated B̄u
        u_r = cuda.local.array(items, real)  # registers: this thread's steps
        dt_r = cuda.local.array(items, real)
        a_r = cuda.local.array(items, real)
        bu_r = cuda.local.array(items, real)
        y_r = cuda.local.array(items, real)
        one = real(1)
        zero = real(0)

        for c in range(n_chunks):
            t0 = c * chunk + tid * items
            # 1. read u, delta once from global memory; discretize Δ on chip
            for i in range(items):
                t = t0 + i
                y_r[i] = zero
                u_r[i] = zero
                dt_r[i] = zero  # dt = 0 past the end makes (Ā, B̄u) = (1, 0): identity
                if t < L:
                    dt_r[i] = _step_delta(delta, dbias, b, d, t, has_bias, softplus)
                    u_r[i] = u[b, d, t]
            for n in range(N):
                a_dn = A[d, n]
                # the running prefix: state at the end of the previous chunk (or h0)
                h_in = _carried_state(states, h0, b, d, c, n, has_h0, zero)
                # 2. Ā = exp(Δ·A), B̄u (eq-selective-disc); fold this thread's steps into one pair
                agg_a, agg_b = _discretize_and_fold(a_r, bu_r, dt_r, u_r, Bm, bB, gB, n, varB,
                                                    a_dn, t0, L, items, one, zero)
                # 3. block-wide scan of the pairs in shared memory: this thread's first state
                h = _scan_to_thread(sh_a, sh_b, agg_a, agg_b, h_in, tid, threads)
                # 4. replay this thread's steps from its prefix; y += C·h
                for i in range(items):
                    t = t0 + i
                    h = a_r[i] * h + bu_r[i]
                    if t < L:
                        y_r[i] += Cm[bC, gC, n, t if varC else 0] * h
                if tid == threads - 1:  # the state after the chunk: carried and stored
                    states[b, d, c, n] = h
                cuda.syncthreads()  # sh_a/sh_b are reused for the next n
            # 5. skip and gate on chip; write only y
            for i in range(items):
                t = t0 + i
                if t < L:
                    y = y_r[i]
                    if has_D:
                        y += Dv[d] * u_r[i]
                    if has_z:
                        zz = z[b, d, t]
                        y *= zz * _sigmoid(zz, one)
                    out[b, d, t] = y
    # [/book:forward-kernel]

    return forward


@functools.lru_cache(maxsize=None)
def _backward_kernel(dtype_name, threads, items):
    """Compile (once per dtype, T, items) the backward kernel."""
    real = np.dtype(dtype_name).type
    chunk = threads * items

    @cuda.jit
    def backward(dout, u, delta, A, Bm, Cm, Dv, z, dbias, h0, states,
                 du, ddelta, dA, dBm, dCm, dDv, dz, ddbias, dh,
                 has_D, has_z, has_bias, softplus, has_h0):
        # dh (B, D, N) enters holding dlast_state (or zeros) and leaves holding dh0:
        # it carries the state gradient from chunk to chunk, right to left.
        b, d, nD, L, N, n_chunks, tid = _block_row(u, A, states)
        bB, gB, bC, gC, varB, varC = _bc_row(Bm, Cm, b, d, nD)

        sh_a = cuda.shared.array(threads, real)
        sh_b = cuda.shared.array(threads, real)
        s1 = cuda.shared.array(threads, real)  # reduction workspaces
        s2 = cuda.shared.array(threads, real)
        s3 = cuda.shared.array(threads, real)
        u_r = cuda.local.array(items, real)
        dt_r = cuda.local.array(items, real)
        dy_r = cuda.local.array(items, real)  # gradient of the pre-gate output y0
        a_r = cuda.local.array(items, real)
        bu_r = cuda.local.array(items, real)
        hp_r = cuda.local.array(items, real)  # h_{t-1}, recomputed
        y_r = cuda.local.array(items, real)  # y0 without D·u, recomputed (for dz)
        du_r = cuda.local.array(items, real)
        ddt_r = cuda.local.array(items, real)
        one = real(1)
        zero = real(0)
        dD_acc = zero
        dbias_acc = zero

        for cc in range(n_chunks):
            c = n_chunks - 1 - cc  # chunks right to left
            t0 = c * chunk + tid * items
            for i in range(items):
                t = t0 + i
                u_r[i] = zero
                dt_r[i] = zero
                dy_r[i] = zero
                du_r[i] = zero
                ddt_r[i] = zero
                y_r[i] = zero
                if t < L:
                    dt_r[i] = _step_delta(delta, dbias, b, d, t, has_bias, softplus)
                    u_r[i] = u[b, d, t]
                    g = dout[b, d, t]
                    if has_z:
                        zz = z[b, d, t]
                        g *= zz * _sigmoid(zz, one)  # dy0 = dout·silu(z)
                    dy_r[i] = g
                    if has_D:
                        du_r[i] = Dv[d] * g
            for n in range(N):
                a_dn = A[d, n]
                h_in = _carried_state(states, h0, b, d, c, n, has_h0, zero)
                q_in = dh[b, d, n]  # gradient reaching the state at this chunk's end
                # forward: recompute the states of this chunk (as in the forward kernel)
                agg_a, agg_b = _discretize_and_fold(a_r, bu_r, dt_r, u_r, Bm, bB, gB, n, varB,
                                                    a_dn, t0, L, items, one, zero)
                h = _scan_to_thread(sh_a, sh_b, agg_a, agg_b, h_in, tid, threads)
                for i in range(items):
                    t = t0 + i
                    hp_r[i] = h
                    h = a_r[i] * h + bu_r[i]
                    if t < L:
                        y_r[i] += Cm[bC, gC, n, t if varC else 0] * h
                # reverse: q_t = Ā_t·(q_{t+1} + C_t·dy_t), the gradient reaching h_{t-1}
                ra = one
                rb = zero
                for k in range(items):
                    i = items - 1 - k
                    t = t0 + i
                    cdy = zero
                    if t < L:
                        cdy = Cm[bC, gC, n, t if varC else 0] * dy_r[i]
                    rb = a_r[i] * (rb + cdy)
                    ra = a_r[i] * ra
                cuda.syncthreads()  # everyone has read the forward prefix
                sh_a[tid] = ra
                sh_b[tid] = rb
                cuda.syncthreads()
                _block_scan_reverse(sh_a, sh_b, tid, threads)
                q = q_in
                if tid < threads - 1:  # suffix of the threads to the right
                    q = sh_a[tid + 1] * q_in + sh_b[tid + 1]
                # replay this thread's steps right to left, accumulating gradients
                dA_loc = zero
                dB_loc = zero
                dC_loc = zero
                for k in range(items):
                    i = items - 1 - k
                    t = t0 + i
                    if t < L:
                        Bv = Bm[bB, gB, n, t if varB else 0]
                        g = q + Cm[bC, gC, n, t if varC else 0] * dy_r[i]  # dL/dh_t
                        dC_t = dy_r[i] * (a_r[i] * hp_r[i] + bu_r[i])  # dy0·h_t
                        da = g * hp_r[i] * a_r[i]  # dL/dĀ · Ā
                        dA_loc += da * dt_r[i]
                        ddt_r[i] += da * a_dn + g * Bv * u_r[i]
                        du_r[i] += g * dt_r[i] * Bv
                        dB_t = g * dt_r[i] * u_r[i]
                        if varB:
                            cuda.atomic.add(dBm, (bB, gB, n, t), dB_t)
                        else:
                            dB_loc += dB_t
                        if varC:
                            cuda.atomic.add(dCm, (bC, gC, n, t), dC_t)
                        else:
                            dC_loc += dC_t
                        q = a_r[i] * g
                if tid == 0:  # the gradient reaching the state before this chunk
                    dh[b, d, n] = q
                # per-block sums of the (D, N)-shaped gradients, then one atomic each
                s1[tid] = dA_loc
                s2[tid] = dB_loc
                s3[tid] = dC_loc
                _block_sum3(s1, s2, s3, tid, threads)
                if tid == 0:
                    cuda.atomic.add(dA, (d, n), s1[0])
                    if not varB:
                        cuda.atomic.add(dBm, (bB, gB, n, 0), s2[0])
                    if not varC:
                        cuda.atomic.add(dCm, (bC, gC, n, 0), s3[0])
                cuda.syncthreads()
            # through softplus and the gate; write the per-step gradients
            for i in range(items):
                t = t0 + i
                if t < L:
                    gdt = ddt_r[i]
                    if softplus:
                        x = delta[b, d, t]
                        if has_bias:
                            x += dbias[d]
                        if x <= SOFTPLUS_THRESHOLD:
                            gdt *= _sigmoid(x, one)
                    ddelta[b, d, t] = gdt
                    du[b, d, t] = du_r[i]
                    dbias_acc += gdt
                    dD_acc += dy_r[i] * u_r[i]
                    if has_z:
                        zz = z[b, d, t]
                        sg = _sigmoid(zz, one)
                        y0 = y_r[i]
                        if has_D:
                            y0 += Dv[d] * u_r[i]
                        dz[b, d, t] = dout[b, d, t] * y0 * sg * (one + zz * (one - sg))
        s1[tid] = dD_acc
        s2[tid] = dbias_acc
        s3[tid] = zero
        _block_sum3(s1, s2, s3, tid, threads)
        if tid == 0:
            if has_D:
                cuda.atomic.add(dDv, d, s1[0])
            if has_bias:
                cuda.atomic.add(ddbias, d, s2[0])

    return backward


@functools.lru_cache(maxsize=None)
def _step_kernel(dtype_name):
    """Compile the one-token decoding step: one thread per (batch, channel), state in place.

    Flat layout (:meth:`ssm_ref.scan_args.StepArgs.flat`): state (S, D, N),
    x, dt, z (B, D), A (D, N), B, C (B, G, N), D, dt_bias (D,).  Batch entry b
    updates state row ``idx[b]`` (b without indices); a negative index is a
    padding entry: its output is 0 and no row is touched.
    """
    real = np.dtype(dtype_name).type

    @cuda.jit
    def step(state, x, dt, A, Bm, Cm, Dv, z, dtb, idx, out,
             has_D, has_z, has_bias, softplus, has_idx):
        Bsz = x.shape[0]
        nD = x.shape[1]
        N = A.shape[1]
        row = cuda.grid(1)
        if row >= Bsz * nD:
            return
        b = row // nD
        d = row % nD
        srow = idx[b] if has_idx else b
        if srow < 0:  # padding
            out[b, d] = real(0)
            return
        gB = d // (nD // Bm.shape[1])
        gC = d // (nD // Cm.shape[1])
        delta = dt[b, d]
        if has_bias:
            delta += dtb[d]
        if softplus:
            delta = _softplus(delta)
        xv = x[b, d]
        one = real(1)
        y = real(0)
        for n in range(N):
            h = math.exp(delta * A[d, n]) * state[srow, d, n] + delta * Bm[b, gB, n] * xv
            state[srow, d, n] = h
            y += Cm[b, gC, n] * h
        if has_D:
            y += Dv[d] * xv
        if has_z:
            zz = z[b, d]
            y *= zz * _sigmoid(zz, one)
        out[b, d] = y

    return step


# --------------------------------------------------------------------------- public API


def _prepare(mover, s, dtype, dout=None):
    """Device views of every input, with 1-element dummies for absent optional ones."""
    dev = {}
    for name in ("u", "delta", "A"):
        dev[name] = mover.device(getattr(s, name), name, dtype)
    for name, form in (("B", s.form_B), ("C", s.form_C)):
        X = getattr(s, name)
        dev[name] = mover.device(X, name, dtype, form.view_shape(tuple(X.shape)))  # (Bb, G, N, Lb)
    for name, ndim in (("D", 1), ("z", 3), ("delta_bias", 1), ("h0", 3), ("dout", 3)):
        x = dout if name == "dout" else getattr(s, name)
        dev[name] = mover.dummy(ndim, dtype) if x is None else mover.device(x, name, dtype)
    return dev


def _launch_forward(mover, dev, s, dtype, chunk_size, threads):
    """Run the forward kernel; return (out, states) as (device view, container) pairs."""
    n_chunks = -(-s.length // chunk_size)
    out = mover.empty((s.batch, s.dim, s.length), dtype)  # (B, D, L)
    states = mover.empty((s.batch, s.dim, n_chunks, s.dstate), dtype)  # (B, D, n_chunks, N)
    kernel = _forward_kernel(np.dtype(dtype).name, threads, chunk_size // threads)
    mover.launch(kernel, s.batch * s.dim, threads)(
        dev["u"], dev["delta"], dev["A"], dev["B"], dev["C"], dev["D"], dev["z"],
        dev["delta_bias"], dev["h0"], out[0], states[0],
        s.D is not None, s.z is not None, s.delta_bias is not None,
        s.delta_softplus, s.h0 is not None)
    return out, states


def _last_state(mover, states, dtype):
    """The state after the last chunk, (B, D, N), from the per-chunk states, in ``dtype``.

    ``dtype`` is A's (as the reference); a Numba device view comes back uncast.
    """
    view, container = states
    if mover.kind == "numpy":
        return np.ascontiguousarray(view.copy_to_host()[:, :, -1, :], dtype)  # (B, D, N)
    if mover.kind == "cupy":
        return mover.cp.ascontiguousarray(container[:, :, -1, :], dtype)  # (B, D, N)
    return view[:, :, -1, :]  # a strided Numba device view (B, D, N)


def _start(s, **extra):
    """After validation: check the backend can run, and adopt DLPack arguments.

    Returns the mover, ``s`` with its arrays adopted, and the adopted ``extra``.
    """
    _require_cuda()
    mover = _Mover(s.u)
    adopted = {name: mover.adopt(getattr(s, name), name) for name in ARRAY_NAMES}
    return (mover, dataclasses.replace(s, **adopted),
            {name: mover.adopt(x, name) for name, x in extra.items()})


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, h0=None, *, chunk_size=None, threads=None):
    """Selective scan on the GPU: the hardware-aware chunked block scan.

    Same signature and semantics as :func:`ssm_ref.selective_scan` (and the official
    ``selective_scan_fn``), plus the two launch parameters.

    Parameters
    ----------
    u, delta : array (B, D, L)
        Input and step size; float32 or float64, and everything is computed in
        u's dtype (other arguments are cast to it).
    A : array (D, N)
        Real diagonal state matrix (complex A raises ``NotImplementedError``).
    B, C : array (D, N), (B, N, L) or (B, G, N, L)
        Constant, variable or grouped input/output matrices, each in its own form.
    D : array (D,), optional
        Skip connection, ``y += D·u``.
    z : array (B, D, L), optional
        Gate, ``y *= silu(z)``.
    delta_bias : array (D,), optional
        Added to delta before the softplus.
    delta_softplus : bool
        Apply softplus (linear above 20) to delta.
    return_last_state : bool
        Also return the state after the last step, (B, D, N).
    h0 : array (B, D, N), optional
        Initial state (zeros if None).
    chunk_size : int, optional
        Time steps per chunk, a multiple of ``threads`` (default on a GPU:
        :func:`gpu_launch`, 1024 for L >= 1024; 16 under the simulator).
    threads : int, optional
        Threads per block, a power of two <= 1024 (default on a GPU:
        :func:`gpu_launch`, 128 for L >= 1024; 8 under the simulator).

    Returns
    -------
    out : array (B, D, L)
        In the caller's kind of array: CuPy for CuPy (and DLPack) input, NumPy for
        NumPy input, a Numba device array for other CUDA arrays.
    last_state : array (B, D, N)
        Only when ``return_last_state``; in A's dtype, as the reference (a
        Numba device array comes back in u's dtype).

    Raises
    ------
    RuntimeError
        Neither a GPU nor the simulator.
    ValueError, TypeError
        As :func:`ssm_ref.selective_scan` (NumPy input goes through its validator);
        bad ``chunk_size`` or ``threads``.
    NotImplementedError
        Complex ``A``.

    Notes
    -----
    Implements eq-selective-recurrence with the chunked block scan built on
    eq-scan-op. One thread block per (batch, channel) row; only y and the
    state at the end of every chunk (B, D, n_chunks, N) are written to global
    memory, never the (B, D, L, N) states.

    References
    ----------
    Gu, A. and Dao, T. (2023). Mamba: Linear-Time Sequence Modeling with Selective
    State Spaces. arXiv:2312.00752, section 3.3.2 (hardware-aware state expansion).

    Examples
    --------
    Launching needs a GPU or the simulator, so the doctest pass (CPU only) skips it:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> u = rng.standard_normal((1, 2, 40)); delta = rng.random((1, 2, 40))
    >>> A = -np.ones((2, 3)); B = rng.standard_normal((1, 3, 40)); C = B.copy()
    >>> y = selective_scan(u, delta, A, B, C, chunk_size=16, threads=8)  # doctest: +SKIP
    >>> y.shape  # doctest: +SKIP
    (1, 2, 40)
    """
    if not isinstance(return_last_state, (bool, np.bool_)):
        raise TypeError(f"Parameter return_last_state = {return_last_state!r} must be a bool")
    s, _, _ = _validate_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    chunk_size, threads = _defaults(chunk_size, threads, s.length)
    mover, s, _ = _start(s)
    dtype = _step_dtype(s.out_dtype)  # computed in u's dtype (bfloat16 in float32)
    dev = _prepare(mover, s, dtype)
    out, states = _launch_forward(mover, dev, s, dtype, chunk_size, threads)
    y = mover.back(out[1], s.out_dtype if dtype != s.out_dtype else None)
    if not return_last_state:
        return y
    return y, _last_state(mover, states, s.state_dtype)


def selective_scan_backward(dout, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, h0=None, dlast_state=None, *,
                            chunk_size=None, threads=None):
    """Gradients of :func:`selective_scan` on the GPU, recomputing states chunk by chunk.

    Parameters
    ----------
    dout : array (B, D, L)
        Gradient of the loss with respect to the output.
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0
        As in :func:`selective_scan`.
    dlast_state : array (B, D, N), optional
        Gradient with respect to the last state.
    chunk_size, threads : int, optional
        Launch parameters, as in :func:`selective_scan`.

    Returns
    -------
    dict
        Gradients keyed "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0",
        each with its argument's shape (B and C in the form they were given), or None
        for an optional argument that was None. For NumPy and CuPy input each has its
        argument's dtype, as in the reference.

    Raises
    ------
    RuntimeError, ValueError, TypeError, NotImplementedError
        As in :func:`selective_scan`.

    Notes
    -----
    Implements eq-selective-backward. The forward kernel runs first and leaves the
    per-chunk states; the backward kernel then walks the chunks right to left: it
    recomputes the chunk's states from the stored state before it, runs the reverse
    recurrence ``q_t = Ā_t (q_{t+1} + C_t dy_t)`` (``q_t`` is the gradient reaching
    ``h_{t-1}``) as a right-to-left block scan with the gradient carried in from the
    next chunk, and reads the parameter gradients off it. Gradients of the (D, N)
    and (D,) parameters are summed over the block in shared memory and added with
    one atomic per block; variable/grouped B and C use one atomic per step (the
    channels of a group, or the whole batch for constant B, share an entry).

    References
    ----------
    Gu, A. and Dao, T. (2023). arXiv:2312.00752, section 3.3.2 and appendix D
    (recomputation in the backward pass).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> u = rng.standard_normal((1, 2, 40)); delta = rng.random((1, 2, 40))
    >>> A = -np.ones((2, 3)); B = rng.standard_normal((2, 3)); C = B.copy()
    >>> g = selective_scan_backward(np.ones_like(u), u, delta, A, B, C)  # doctest: +SKIP
    >>> g["A"].shape  # doctest: +SKIP
    (2, 3)
    """
    if dout is None:
        raise TypeError("Parameter dout is None but an array was expected")
    s, dout, dlast_state = _validate_scan(u, delta, A, B, C, D, z, delta_bias,
                                          delta_softplus, h0, dout=dout,
                                          dlast_state=dlast_state)
    chunk_size, threads = _defaults(chunk_size, threads, s.length)
    mover, s, extra = _start(s, dout=dout, dlast_state=dlast_state)
    dout, dlast_state = extra["dout"], extra["dlast_state"]
    dtype = _step_dtype(s.out_dtype)  # computed in u's dtype (bfloat16 in float32)
    Bsz, nD, L, N = s.batch, s.dim, s.length, s.dstate
    dev = _prepare(mover, s, dtype, dout)
    _, states = _launch_forward(mover, dev, s, dtype, chunk_size, threads)
    grads = {"u": mover.empty((Bsz, nD, L), dtype),  # (B, D, L)
             "delta": mover.empty((Bsz, nD, L), dtype),  # (B, D, L)
             "A": mover.zeros((nD, N), dtype),  # (D, N)
             "B": mover.zeros(s.form_B.view_shape(tuple(s.B.shape)), dtype),  # (Bb, G, N, Lb)
             "C": mover.zeros(s.form_C.view_shape(tuple(s.C.shape)), dtype),  # (Bb, G, N, Lb)
             "D": mover.zeros((nD,), dtype),
             "z": mover.empty((Bsz, nD, L), dtype) if s.z is not None
             else (dev["z"], None),
             "delta_bias": mover.zeros((nD,), dtype),
             # enters as dlast_state (or 0), leaves as dh0: the carried state gradient
             "h0": mover.zeros((Bsz, nD, N), dtype) if dlast_state is None
             else mover.copy(dlast_state, "dlast_state", dtype)}  # (B, D, N)
    kernel = _backward_kernel(np.dtype(dtype).name, threads, chunk_size // threads)
    mover.launch(kernel, Bsz * nD, threads)(
        dev["dout"], dev["u"], dev["delta"], dev["A"], dev["B"], dev["C"], dev["D"],
        dev["z"], dev["delta_bias"], dev["h0"], states[0],
        *(grads[k][0] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")),
        s.D is not None, s.z is not None, s.delta_bias is not None,
        s.delta_softplus, s.h0 is not None)
    result = {}
    for name, (_, container) in grads.items():
        arg = getattr(s, name)
        if arg is None:
            result[name] = None
            continue
        g = mover.back(container, s.dtypes[name] if mover.kind != "numba" else None)
        result[name] = g.reshape(tuple(arg.shape)) if name in "BC" else g
    return result


def _validate_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, indices, in_place):
    """Check the decoding step's arguments; return ``(StepArgs of shapes, arrays, dtypes)``.

    Host (NumPy) input goes through the reference's own checks
    (:func:`ssm_ref.scan_args.check_step_args`, values included).  Device
    input is checked on zero-memory host stand-ins of the same shapes and
    dtypes (``np.broadcast_to``), so that the layouts, shapes and groups are
    checked by the same code with the same messages; the value checks are
    left out (each would cost a device reduction and a synchronisation),
    except for ``state_batch_indices``, copied to the host and checked, since
    a wrong index would write outside the cache.
    """
    given = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    on_device = any(_is_device(v) for v in list(given.values()) + [indices] if v is not None)
    q = None
    if not on_device:
        q = check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, indices,
                            in_place=in_place)
    check_bool(dt_softplus, "dt_softplus")
    arrs, dtypes = {}, {}
    for name, v in given.items():
        arrs[name] = None
        if v is not None:
            arrs[name], _, dtypes[name] = _shape_of(v, name)
    if dtypes["A"].kind == "c":
        raise NotImplementedError("Parameter A is complex; the cuda backend supports real A "
                                  "only (backends 'numba' and 'ref' take complex A)")
    if q is not None:
        return q, arrs, dtypes
    for name, dt_ in dtypes.items():
        if dt_.kind == "c":
            raise TypeError(f"Parameter {name} is complex ({dt_}) but A is real")
    stand_ins = {name: None if v is None else np.broadcast_to(np.zeros((), dtypes[name]),
                                                              tuple(v.shape))
                 for name, v in arrs.items()}
    if indices is not None:
        if _is_cupy(indices):
            indices = indices.get()
        elif _has_cai(indices) or getattr(indices, "__cuda_ndarray__", False):
            indices = cuda.as_cuda_array(indices).copy_to_host()
    q = check_step_args(**stand_ins, dt_softplus=dt_softplus, state_batch_indices=indices)
    return q, arrs, dtypes


def _prepare_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, indices, in_place):
    """:func:`_validate_step`, then the compute dtype, the CUDA check and the arrays adopted
    by a :class:`_Mover`: ``(q, arrays, dtypes, dtype, mover)`` for both step functions."""
    q, arrs, dtypes = _validate_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                     indices, in_place)
    dtype = _step_dtype(dtypes["x"])
    _require_cuda()
    mover = _Mover(arrs["x"])
    return q, {k: mover.adopt(v, k) for k, v in arrs.items()}, dtypes, dtype, mover


def _step_dtype(x_dtype, name="x"):
    """The dtype a kernel computes in: ``x_dtype`` (float32, float64), float32 for bfloat16."""
    if x_dtype.name == "bfloat16":
        return np.dtype(np.float32)
    if x_dtype not in (np.float32, np.float64):
        raise TypeError(f"Parameter {name} has dtype {x_dtype}; the cuda backend computes in "
                        "float32 or float64 (bfloat16 in float32)")
    return np.dtype(x_dtype)


def _launch_step(q, arrs, dtype, mover, dev_state, indices):
    """Run the step kernel on the flat device state ``dev_state``; return the (B, D) output."""
    dev = {name: mover.device(arrs[name], name, dtype, q.flat(name).shape)
           for name in ("x", "dt", "A", "B", "C")}
    for name, ndim in (("D", 1), ("z", 2), ("dt_bias", 1)):
        dev[name] = mover.dummy(ndim, dtype) if arrs[name] is None \
            else mover.device(arrs[name], name, dtype, q.flat(name).shape)
    if indices is None:
        dev_idx = mover.dummy(1, np.int64)
    else:
        dev_idx = mover.device(indices, "state_batch_indices", np.int64)
    out = mover.empty((q.batch, q.dim), dtype)  # (B, D)
    threads = SIM_THREADS if _simulator_on() else GPU_THREADS
    blocks = -(-(q.batch * q.dim) // threads)
    mover.launch(_step_kernel(np.dtype(dtype).name), blocks, threads)(
        dev_state, dev["x"], dev["dt"], dev["A"], dev["B"], dev["C"], dev["D"], dev["z"],
        dev["dt_bias"], dev_idx, out[0], arrs["D"] is not None, arrs["z"] is not None,
        arrs["dt_bias"] is not None, bool(q.dt_softplus), indices is not None)
    return out


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None):
    """One decoding step of the selective SSM on the GPU, ``state`` updated in place.

    Same signature and semantics as :func:`ssm_ref.selective_state_update`
    (the official function's: single- and multi-head layouts,
    ``state_batch_indices``); real A only.

    Parameters
    ----------
    state : array (B, D, N) or (B, H, P, N)
        The state before the step; the new state is written into it.  A CuPy
        (or other CUDA) array of the compute dtype, C-contiguous, is updated
        by the kernel where it lies; otherwise (a NumPy array, another
        dtype, a strided view) the kernel updates a device copy and the rows
        it touched are written back into ``state``.
    x, dt : array (B, D) or (B, H, P)
        Input and step size of the new token; computed in x's dtype
        (float32 or float64; bfloat16 in float32).
    A : array (D, N) or (H, P, N)
        Real diagonal state matrix.
    B, C : array (B, N) or (B, G, N)
        Input and output matrices of the new token.
    D, dt_bias : array (D,) or (H, P), optional
    z : array (B, D) or (B, H, P), optional
    dt_softplus : bool
    state_batch_indices : int array (B,), optional
        The state row of each batch entry (negative: padding, output 0).

    Returns
    -------
    out : array, shape of x
        In x's dtype, in the caller's kind of array.

    Raises
    ------
    RuntimeError, ValueError, TypeError, NotImplementedError
        As in :func:`selective_scan`.

    Notes
    -----
    Implements eq-selective-recurrence and eq-selective-output for one step:
    ``h = exp(dt·A)·state + dt·B·x``, ``y = (<C, h> + D·x)·silu(z)``. One thread per
    (batch, channel); a single step needs no scan.

    Examples
    --------
    >>> import numpy as np
    >>> state = np.zeros((1, 2, 3)); x = np.ones((1, 2)); dt = np.full((1, 2), 0.1)
    >>> A = -np.ones((2, 3)); B = np.ones((1, 3)); C = np.ones((1, 3))
    >>> y = selective_state_update(state, x, dt, A, B, C)  # doctest: +SKIP
    >>> np.round(y, 6), np.round(state[0, 0], 6)  # doctest: +SKIP
    (array([[0.3, 0.3]]), array([0.1, 0.1, 0.1]))
    """
    q, arrs, dtypes, dtype, mover = _prepare_step(state, x, dt, A, B, C, D, z, dt_bias,
                                                  dt_softplus, state_batch_indices,
                                                  in_place=True)
    indices = mover.adopt(state_batch_indices, "state_batch_indices")
    target = arrs["state"]
    flat_shape = q.flat("state").shape  # (S, D, N)
    in_place = (mover.kind != "numpy" and np.dtype(dtypes["state"]) == dtype
                and (not _is_cupy(target) or target.flags.c_contiguous))
    if in_place:  # the kernel writes the caller's device memory
        dev_state = mover.device(target, "state", dtype, flat_shape)
    else:  # a device copy in the compute dtype; the touched rows go back below
        dev_state, copy = mover.copy(target, "state", dtype)
        dev_state = dev_state.reshape(flat_shape)
    out = _launch_step(q, arrs, dtype, mover, dev_state, indices)
    if not in_place:
        _write_back(mover, target, copy, q, state_batch_indices)
    return mover.back(out[1], dtypes["x"] if mover.kind != "numba" else None).reshape(
        tuple(arrs["x"].shape))


def _write_back(mover, target, copy, q, indices):
    """Write the rows the step touched from the device copy into the caller's ``state``."""
    if mover.kind == "numpy":
        new = copy.copy_to_host()
    else:
        new = copy
    if indices is None:
        target[...] = new.reshape(target.shape).astype(target.dtype)
        return
    idx = indices if mover.kind != "numpy" else np.asarray(indices)
    rows = idx[idx >= 0]
    new = new.reshape(target.shape)
    target[rows] = new[rows].astype(target.dtype)


def selective_state_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                         dt_softplus=False):
    """The decoding step in functional form on the GPU: ``(y, new_state)``, state untouched.

    Same as :func:`ssm_ref.selective_state_step` (real A only): the kernel of
    :func:`selective_state_update` runs on a device copy of ``state``, which
    is returned (in ``state``'s dtype; a Numba device array as computed).

    Examples
    --------
    >>> import numpy as np
    >>> state = np.zeros((1, 2, 3)); x = np.ones((1, 2)); dt = np.full((1, 2), 0.1)
    >>> A = -np.ones((2, 3)); B = np.ones((1, 3)); C = np.ones((1, 3))
    >>> y, h = selective_state_step(state, x, dt, A, B, C)  # doctest: +SKIP
    >>> np.round(y, 6)  # doctest: +SKIP
    array([[0.3, 0.3]])
    """
    q, arrs, dtypes, dtype, mover = _prepare_step(state, x, dt, A, B, C, D, z, dt_bias,
                                                  dt_softplus, None, in_place=False)
    dev_state, copy = mover.copy(arrs["state"], "state", dtype)
    out = _launch_step(q, arrs, dtype, mover, dev_state.reshape(q.flat("state").shape), None)
    numba_kind = mover.kind == "numba"
    y = mover.back(out[1], None if numba_kind else dtypes["x"]).reshape(tuple(arrs["x"].shape))
    return y, mover.back(copy, None if numba_kind else dtypes["state"])
