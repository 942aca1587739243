"""Selective-scan cases: the one factory of scan inputs, and the lists tests iterate over.

Every test of a selective scan (the reference, its backward, the Numba and CUDA backends,
the fake device, hidden attention) builds its inputs with :func:`scan_case`, sized for the
test, and the cotangents of a backward with :func:`cotangents`.

The B/C forms (``ssm_ref.scan_args.BCForm``): ``constant`` (D, N), ``variable`` (B, N, L),
``grouped`` (B, G, N, L).  ``A`` has a negative real part (a stable scan), plus an
imaginary part for complex cases; the optional arguments D, z, delta_bias and h0 are on or
off one by one.
"""
from __future__ import annotations

import contextlib
import itertools

import numpy as np

FORMS = ("constant", "variable", "grouped")
#: (form of B, form of C), all nine.
FORM_PAIRS = tuple(itertools.product(FORMS, FORMS))
#: Result dtypes of the real scans.
DTYPES = (np.float64, np.float32)
#: (form of B, form of C, complex A) and their test ids.
CASES = [(fb, fc, cx) for fb, fc in FORM_PAIRS for cx in (False, True)]
CASE_IDS = [f"B-{fb}-C-{fc}-{'complex' if cx else 'real'}" for fb, fc, cx in CASES]
#: The optional arguments of the scan.
OPTIONAL = ("D", "z", "delta_bias", "h0")
#: The arguments a backward returns a gradient for.
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")


def bc_shape(form, batch, dim, dstate, length, groups=2):
    """The shape of B or C in ``form``."""
    return {"constant": (dim, dstate), "variable": (batch, dstate, length),
            "grouped": (batch, groups, dstate, length)}[form]


def make_bc(rng, form, batch, dim, dstate, length, groups=2, complex_=False,
            dtype=np.float64):
    """A random B or C in ``form``: standard normal (complex128 for a complex case)."""
    shape = bc_shape(form, batch, dim, dstate, length, groups)
    X = rng.standard_normal(shape)
    return X + 1j * rng.standard_normal(shape) if complex_ else X.astype(dtype)


def scan_case(rng, form_B="variable", form_C="variable", complex_=False, dtype=np.float64, *,
              batch=2, dim=4, length=9, dstate=3, groups=2, extras=True, D=None, z=None,
              delta_bias=None, h0=None, softplus=None, A_spread=1.0, A_imag=np.pi):
    """Random valid arguments of a selective scan, as keyword arguments.

    Real arrays are in ``dtype``; the complex ones (A, B, C, h0 of a complex case) are
    complex128.  ``groups`` is G of a grouped B and C, or a pair (G of B, G of C).
    ``extras`` switches D, z, delta_bias, h0 and delta_softplus on or off together (an
    argument switched off is left out); each one given explicitly overrides it.  With
    softplus, delta is standard normal (softplus makes it positive), otherwise it lies in
    [0.05, 0.55] and delta_bias in [0, 0.3].  A = -exp(A_spread * N(0, 1)) (+ 1j * A_imag
    * N(0, 1) for a complex case).
    """
    D, z, delta_bias, h0, softplus = (extras if v is None else v
                                      for v in (D, z, delta_bias, h0, softplus))
    g_B, g_C = (groups, groups) if np.ndim(groups) == 0 else groups
    A = -np.exp(A_spread * rng.standard_normal((dim, dstate)))  # Re(A) < 0
    A = A + 1j * A_imag * rng.standard_normal((dim, dstate)) if complex_ else A.astype(dtype)
    delta = (rng.standard_normal((batch, dim, length)) if softplus
             else 0.05 + 0.5 * rng.random((batch, dim, length)))
    kw = dict(u=rng.standard_normal((batch, dim, length)).astype(dtype),
              delta=delta.astype(dtype), A=A,
              B=make_bc(rng, form_B, batch, dim, dstate, length, g_B, complex_, dtype),
              C=make_bc(rng, form_C, batch, dim, dstate, length, g_C, complex_, dtype))
    if softplus:
        kw["delta_softplus"] = True
    if D:
        kw["D"] = rng.standard_normal(dim).astype(dtype)
    if z:
        kw["z"] = rng.standard_normal((batch, dim, length)).astype(dtype)
    if delta_bias:
        bias = rng.standard_normal(dim) if softplus else rng.random(dim)  # delta + bias > 0
        kw["delta_bias"] = (0.3 * bias).astype(dtype)
    if h0:
        state = rng.standard_normal((batch, dim, dstate))
        kw["h0"] = (state + 1j * rng.standard_normal(state.shape) if complex_
                    else state.astype(dtype))
    return kw


def cotangents(rng, kw, dlast=True):
    """``(dout, dlast_state)`` for a backward of the scan ``kw``: dout like u, dlast like h
    (complex for a complex A; None without ``dlast``)."""
    batch, dim, _ = kw["u"].shape
    dstate = kw["A"].shape[1]
    dout = rng.standard_normal(kw["u"].shape).astype(kw["u"].dtype)
    if not dlast:
        return dout, None
    dl = rng.standard_normal((batch, dim, dstate))
    if np.iscomplexobj(kw["A"]):
        return dout, dl + 1j * rng.standard_normal(dl.shape)
    return dout, dl.astype(np.result_type(kw["A"].dtype, kw["u"].dtype))


def astype(kw, dtype):
    """The same arguments with every real array cast to ``dtype`` (complex ones kept)."""
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) and not np.iscomplexobj(v) else v)
            for k, v in kw.items()}


def check_grads(g, g_ref, g_other, other):
    """A fast backward's gradients ``g`` against the reference's (``"backend"`` tolerance) and
    against another fast layout's on the same input (``"exact"``: the same updates, sums in
    another order); ``other`` names that layout in the messages.  None where the reference
    has None."""
    from conftest import assert_close
    for key in GRAD_NAMES:
        if g_ref[key] is None:
            assert g[key] is None, key
            continue
        assert g[key].shape == g_ref[key].shape and g[key].dtype == g_ref[key].dtype, key
        assert_close(g[key], g_ref[key], kind="backend", err_msg=f"d{key}")
        assert_close(g[key], g_other[key], kind="exact", err_msg=f"d{key} against {other}")


@contextlib.contextmanager
def numba_threads(n):
    """Numba's thread count set to ``n`` (at most ``NUMBA_NUM_THREADS``) inside the ``with``
    block, and set back after it."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def count_calls(monkeypatch, module, names):
    """Replace the functions ``names`` of ``module`` by spies that count their calls and call
    them: returns the dict of counts, one per name (the kernel-family tests prove with it
    which kernel ran).  ``names`` may map a function's name to the count it adds to (one
    count for a family's variants)."""
    counts = {key: 0 for key in (names.values() if isinstance(names, dict) else names)}
    for name, key in (names.items() if isinstance(names, dict) else zip(names, names)):
        kernel = getattr(module, name)

        def spy(*args, _kernel=kernel, _key=key):
            counts[_key] += 1
            return _kernel(*args)
        monkeypatch.setattr(module, name, spy)
    return counts


def small_model(name):
    """A builder of a one-layer model of ``ssm_ref.vision.build_model`` on 8x8 one-channel
    images (embedding 8, state 4, seed 0), for :func:`numba_against_reference`."""
    def build():
        import ssm_ref  # noqa: PLC0415
        return ssm_ref.vision.build_model(name, img_size=(8, 8), in_chans=1, embed_dim=8,
                                          depth=1, d_state=4, seed=0)
    return build


def numba_against_reference(monkeypatch, build, module, kernels, x, rng):
    """A model (or block) on Numba's scan functions against the same one on the reference's:
    ``build()`` makes each; the calls of ``kernels`` of ``module`` are counted (as
    :func:`count_calls`) while a forward and a backward on ``x`` run on both, and the
    outputs and every gradient must agree within the ``"backend"`` tolerance.  Returns the
    counts after the forward and after the backward."""
    import fast  # noqa: PLC0415: the tests' helpers import fast only where they need it
    from conftest import assert_close  # noqa: PLC0415
    ref, model = build(), build()
    model.set_backend(*fast.scan_functions("numba"))
    calls = count_calls(monkeypatch, module, kernels)
    out, cache = model.forward(x, return_cache=True)
    after_forward = dict(calls)
    out_ref, cache_ref = ref.forward(x, return_cache=True)
    assert_close(out, out_ref, kind="backend")
    dout = rng.standard_normal(out.shape)
    grads, grads_ref = model.backward(dout, cache), ref.backward(dout, cache_ref)
    if isinstance(grads, tuple):  # a block: (dx, grads)
        assert_close(grads[0], grads_ref[0], kind="backend", err_msg="dx")
        grads, grads_ref = grads[1], grads_ref[1]
    for key in grads_ref:
        assert_close(grads[key], grads_ref[key], kind="backend", err_msg=key)
    return after_forward, dict(calls)


def script_module(path, name):
    """The Python file ``path`` (a script outside the packages) imported as module ``name``."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_refusal(path, *args):
    """``(exit status, stderr)`` of the Python script ``path`` run with ``args`` from the
    repository's root: how the benchmark scripts' tests check a bad command line."""
    import subprocess
    import sys
    from pathlib import Path
    run = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                         cwd=Path(path).resolve().parents[1])
    return run.returncode, run.stderr
