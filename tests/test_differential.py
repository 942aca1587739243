"""Property-based differential test of the selective scan: every CPU backend, forward and
backward, against each other and against a float64 loop oracle.

Hypothesis draws a small scan (B <= 2, D <= 4, L <= 6, N <= 4): each form of B and of C
(constant (D, N), variable (B, N, L), grouped (B, G, N, L) with G dividing D), real or
complex A (complex B and C, or real ones read as complex), D, z, delta_bias, h0 and the
softplus each on or off, float32 or float64, contiguous or strided (non-contiguous views of
larger arrays).  For each draw:

* forward: the output and the last state of every backend against :func:`loop_scan`, a
  float64 (complex128) transcription of the definition with one scalar loop per index, and
  the backends against each other;
* backward: for every argument, the directional derivative ``<grad, v>`` of the loss
  ``sum(dout * y) + Re sum(conj(dlast) * h_last)`` along a random direction ``v`` against
  central differences of the loop oracle, and the backends' gradients against each other.

Tolerances come from the one table in ``conftest.py`` (kind ``backend`` for a backend
against float64, ``fd`` for finite differences), keyed by the result's dtype.  Settings are
derandomized (the same examples on every run, so CI is reproducible) and sized to run in
well under a minute on one core.  A small variant runs the ``cuda`` backend on Numba's CUDA
simulator (marked ``cudasim``).
"""
from __future__ import annotations

import cmath
import math

import numpy as np
import pytest
from conftest import assert_close, on_cuda_simulator, tolerance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fast
from ssm_ref.scan_args import ARRAY_NAMES

CPU_BACKENDS = [name for name in ("ref", "numba") if fast.backends()[name][0]]
FORMS = ("constant", "variable", "grouped")


# --------------------------------------------------------------------------- the oracle

def _softplus(x):
    return x if x > 20.0 else math.log1p(math.exp(x))


def _bc(X, form, b, d, n, t, dim):
    """The entry of B (or C) that channel d of batch b reads for state n at step t."""
    if form == "constant":
        return X[d, n]
    if form == "variable":
        return X[b, n, t]
    return X[b, d // (dim // X.shape[1]), n, t]


def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
              h0=None, form_B="variable", form_C="variable"):
    """The selective scan by its definition, one Python scalar at a time, in float64.

    Returns ``(y, h_last)``: y (B, D, L) float64, h_last (B, D, N) in complex128 for complex
    A, else float64.
    """
    cplx = np.iscomplexobj(A)
    work = complex if cplx else float
    batch, dim, length = u.shape
    dstate = A.shape[1]
    y = np.zeros((batch, dim, length))
    last = np.zeros((batch, dim, dstate), np.complex128 if cplx else np.float64)
    exp = cmath.exp if cplx else math.exp
    for b in range(batch):
        for d in range(dim):
            h = [work(h0[b, d, n]) if h0 is not None else work(0) for n in range(dstate)]
            for t in range(length):
                dt = float(delta[b, d, t]) + (float(delta_bias[d]) if delta_bias is not None
                                              else 0.0)
                if delta_softplus:
                    dt = _softplus(dt)
                acc = work(0)
                for n in range(dstate):
                    Bv = work(_bc(B, form_B, b, d, n, t, dim))
                    Cv = work(_bc(C, form_C, b, d, n, t, dim))
                    h[n] = exp(dt * work(A[d, n])) * h[n] + dt * Bv * float(u[b, d, t])
                    acc += Cv * h[n]
                out = 2.0 * acc.real if cplx else acc  # conjugate pairs: 2 Re
                if D is not None:
                    out += float(D[d]) * float(u[b, d, t])
                if z is not None:
                    zz = float(z[b, d, t])
                    out *= zz / (1.0 + math.exp(-zz))  # silu
                y[b, d, t] = out
            last[b, d] = h
    return y, last


# --------------------------------------------------------------------------- the draws

@st.composite
def scans(draw, max_dim=4, max_length=6, max_dstate=4, max_batch=2,
          dtypes=("float32", "float64"), complex_a=True):
    """Keyword arguments of a small valid scan, with its B/C forms, as drawn (real A only
    without ``complex_a``)."""
    batch = draw(st.integers(1, max_batch))
    dim = draw(st.integers(1, max_dim))
    length = draw(st.integers(1, max_length))
    dstate = draw(st.integers(1, max_dstate))
    form_B, form_C = draw(st.sampled_from(FORMS)), draw(st.sampled_from(FORMS))
    divisors = [g for g in range(1, dim + 1) if dim % g == 0]
    G_B, G_C = draw(st.sampled_from(divisors)), draw(st.sampled_from(divisors))
    cplx = complex_a and draw(st.booleans())
    bc_complex = cplx and draw(st.booleans())
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    options = {k: draw(st.booleans()) for k in ("D", "z", "delta_bias", "h0")}
    softplus = draw(st.booleans())
    strided = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))

    rng = np.random.default_rng(seed)
    cdtype = np.result_type(dtype, np.complex64)

    def real(shape):
        return rng.standard_normal(shape).astype(dtype)

    def bc(form, G):
        shape = {"constant": (dim, dstate), "variable": (batch, dstate, length),
                 "grouped": (batch, G, dstate, length)}[form]
        X = rng.standard_normal(shape)
        if bc_complex:
            return (X + 1j * rng.standard_normal(shape)).astype(cdtype)
        return X.astype(dtype)

    A = -np.exp(0.7 * rng.standard_normal((dim, dstate)))  # Re(A) < 0
    A = (A + 1j * math.pi * rng.standard_normal((dim, dstate))).astype(cdtype) if cplx \
        else A.astype(dtype)
    if softplus:
        delta = real((batch, dim, length))
    else:  # a positive step, away from 0 (finite differences must not cross it)
        delta = (0.05 + 0.5 * rng.random((batch, dim, length))).astype(dtype)
    kw = dict(u=real((batch, dim, length)), delta=delta, A=A, B=bc(form_B, G_B),
              C=bc(form_C, G_C), delta_softplus=softplus)
    if options["D"]:
        kw["D"] = real(dim)
    if options["z"]:
        kw["z"] = real((batch, dim, length))
    if options["delta_bias"]:
        kw["delta_bias"] = ((rng.standard_normal(dim) if softplus else rng.random(dim)) * 0.3
                            ).astype(dtype)
    if options["h0"]:
        h0 = rng.standard_normal((batch, dim, dstate))
        kw["h0"] = ((h0 + 1j * rng.standard_normal(h0.shape)).astype(cdtype) if cplx
                    else h0.astype(dtype))
    if strided:
        kw = {k: (_strided(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    forms = {"form_B": form_B, "form_C": form_C}
    dout = rng.standard_normal((batch, dim, length)).astype(dtype)
    dlast = rng.standard_normal((batch, dim, dstate))
    if cplx:
        dlast = dlast + 1j * rng.standard_normal(dlast.shape)
    dlast = dlast.astype(A.dtype) if draw(st.booleans()) else None
    return kw, forms, dout, dlast, seed


def _strided(a):
    """The values of ``a`` as a non-contiguous view: every other entry of a larger array,
    with the axes stored in reverse order (the layout of channels-last tokens)."""
    big = np.zeros(a.shape[::-1][:-1] + (2 * a.shape[0],), a.dtype)
    view = big[..., ::2]  # (..., a.shape[0]) with stride 2
    view[...] = a.transpose(tuple(range(a.ndim))[::-1])
    out = view.transpose(tuple(range(a.ndim))[::-1])
    assert np.array_equal(out, a) and (a.size <= 1 or not out.flags.c_contiguous)
    return out


def _f64(kw):
    """float64 / complex128 copies: the oracle's precision."""
    return {k: (v.astype(np.complex128 if np.iscomplexobj(v) else np.float64)
                if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


# --------------------------------------------------------------------------- the checks

def _loss(kw, forms, dout, dlast):
    y, h = loop_scan(**_f64(kw), **forms)
    val = float(np.sum(dout.astype(np.float64) * y))
    if dlast is not None:
        val += float(np.sum(np.conj(dlast.astype(np.complex128)) * h).real)
    return val


def _directional_fd(kw, forms, dout, dlast, name, v, eps=1e-6):
    """Central difference of the oracle's loss along ``v`` in argument ``name`` (float64)."""
    base = _f64(kw)
    up = dict(base, **{name: base[name] + eps * v})
    down = dict(base, **{name: base[name] - eps * v})
    return (_loss(up, forms, dout, dlast) - _loss(down, forms, dout, dlast)) / (2 * eps)


def _check_forward(kw, forms, backend_results):
    y64, h64 = loop_scan(**_f64(kw), **forms)
    out_dtype = kw["u"].dtype
    for backend, (y, h) in backend_results.items():
        assert_close(y, y64, "backend", dtype=out_dtype, err_msg=f"{backend} y")
        assert_close(h, h64, "backend", dtype=kw["A"].dtype, err_msg=f"{backend} last state")
    first, *others = backend_results
    for backend in others:
        for k, what in enumerate(("y", "last state")):
            assert_close(backend_results[backend][k], backend_results[first][k], "backend",
                         err_msg=f"{backend} vs {first} {what}")


def _check_backward(kw, forms, dout, dlast, grads_by_backend, seed):
    rng = np.random.default_rng(seed + 1)
    names = [n for n in ARRAY_NAMES if kw.get(n) is not None]
    for backend, grads in grads_by_backend.items():
        assert set(grads) == set(ARRAY_NAMES), backend
        for name in ARRAY_NAMES:
            if kw.get(name) is None:
                assert grads[name] is None, (backend, name)
    for name in names:
        x = kw[name]
        v = rng.standard_normal(x.shape)
        if np.iscomplexobj(x):
            v = v + 1j * rng.standard_normal(x.shape)
        fd = _directional_fd(kw, forms, dout, dlast, name, v)
        for backend, grads in grads_by_backend.items():
            g = grads[name]
            assert g.shape == x.shape and g.dtype == x.dtype, (backend, name, g.shape, g.dtype)
            terms = (np.conj(g.astype(np.complex128)) * v).real  # <g, v> = Re sum conj(g) v
            got, scale = float(terms.sum()), float(np.abs(terms).sum())
            kind = "fd" if g.dtype in (np.float64, np.complex128) else "backend"
            rtol, atol = tolerance(kind, g.dtype)
            # finite differences of the float64 oracle are good to ~1e-9: the gradient's own
            # precision sets the bound, relative to the size of the terms summed
            assert abs(got - fd) <= atol * math.sqrt(x.size) + rtol * max(scale, abs(fd)), (
                f"{backend} d{name}: <grad, v> = {got!r} but finite differences of the "
                f"float64 loop give {fd!r} (terms summing to {scale:.3g})")
    first, *others = grads_by_backend
    for backend in others:
        for name in names:
            assert_close(grads_by_backend[backend][name], grads_by_backend[first][name],
                         "backend", err_msg=f"{backend} vs {first} d{name}")


def _run(backends, kw, dout, dlast, **launch):
    fwd, bwd = {}, {}
    for backend in backends:
        fwd[backend] = fast.selective_scan(**kw, return_last_state=True, backend=backend,
                                           **launch)
        bwd[backend] = fast.selective_scan_backward(dout, **kw, dlast_state=dlast,
                                                    backend=backend, **launch)
    return fwd, bwd


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=scans())
def test_cpu_backends_agree_with_the_float64_loop(case):
    kw, forms, dout, dlast, seed = case
    fwd, bwd = _run(CPU_BACKENDS, kw, dout, dlast)
    _check_forward(kw, forms, fwd)
    _check_backward(kw, forms, dout, dlast, bwd, seed)


def test_the_loop_oracle_is_the_definition():
    """One state, A = -1, delta = 0.5, B = C = 1, u = 1: y_t = 0.5 (1 + e^-0.5 + ...)."""
    u = np.ones((1, 1, 3))
    y, h = loop_scan(u, 0.5 * u, np.array([[-1.0]]), np.array([[1.0]]), np.array([[1.0]]),
                     form_B="constant", form_C="constant")
    a = math.exp(-0.5)
    assert np.allclose(y[0, 0], [0.5, 0.5 * (1 + a), 0.5 * (1 + a + a * a)], rtol=1e-15)
    assert h[0, 0, 0] == y[0, 0, 2]


def test_the_draws_cover_every_form_and_option():
    """The strategy reaches every B/C form, both kinds of A, every option, both dtypes and
    strided inputs (a check of the test itself: a narrowed strategy would pass silently)."""
    seen = set()

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(case=scans())
    def collect(case):
        kw, forms, _, dlast, _ = case
        seen.update({("B", forms["form_B"]), ("C", forms["form_C"]),
                     ("complex", np.iscomplexobj(kw["A"])), ("dtype", kw["u"].dtype.name),
                     ("softplus", kw["delta_softplus"]), ("dlast", dlast is not None),
                     ("strided", not kw["u"].flags.c_contiguous and kw["u"].size > 1),
                     ("complex B", np.iscomplexobj(kw["B"]))})
        seen.update(("option", k) for k in ("D", "z", "delta_bias", "h0") if k in kw)

    collect()
    want = ({("B", f) for f in FORMS} | {("C", f) for f in FORMS}
            | {("complex", True), ("complex", False), ("dtype", "float32"),
               ("dtype", "float64"), ("softplus", True), ("softplus", False),
               ("dlast", True), ("strided", True), ("strided", False), ("complex B", True)}
            | {("option", k) for k in ("D", "z", "delta_bias", "h0")})
    assert want <= seen, want - seen


# --------------------------------------------------------------------------- CUDA simulator

@pytest.mark.cudasim
@pytest.mark.skipif(not on_cuda_simulator(),
                    reason="needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported")
@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=scans(max_dim=2, max_length=5, max_dstate=2, max_batch=1, complex_a=False))
def test_cuda_backend_on_the_simulator_agrees_with_ref(case):
    """The cuda backend (real A only: it refuses complex A by name) against ref and the
    loop, on a handful of tiny draws: the simulator runs every GPU thread in Python."""
    kw, forms, dout, dlast, seed = case
    fwd, bwd = _run(["ref"], kw, dout, dlast)
    from fast import cuda_scan
    y, h = cuda_scan.selective_scan(**kw, return_last_state=True, chunk_size=4, threads=2)
    g = cuda_scan.selective_scan_backward(dout, **kw, dlast_state=dlast, chunk_size=4,
                                          threads=2)
    fwd["cuda"], bwd["cuda"] = (np.asarray(y), np.asarray(h)), g
    _check_forward(kw, forms, fwd)
    _check_backward(kw, forms, dout, dlast, bwd, seed)
