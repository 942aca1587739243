"""The official decoding step, ``selective_state_update``, on every backend.

The official function (state-spaces/mamba, ``mamba_ssm/ops/triton/selective_state_update.py``)
writes the new state into ``state`` in place and returns ``out``; it takes a single-head layout
(state (batch, dim, dstate)) and a multi-head one (state (batch, nheads, dim, dstate), B/C in
``ngroups`` groups of heads), and ``state_batch_indices`` into a larger state cache (negative:
padding).  The oracle here is a float64 loop over (batch, head, dim, state) written from those
semantics, :func:`loop_oracle`; the functional form ``selective_state_step`` must agree with it
and leave ``state`` alone.
"""
from __future__ import annotations

import cmath
import math

import numpy as np
import pytest

from conftest import SIM_BACKENDS, assert_close

import fast
import ssm_ref


# ---------------------------------------------------------------------------
# the oracle: one scalar loop, float64 (complex128 for complex A)
# ---------------------------------------------------------------------------

def loop_oracle(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                state_batch_indices=None):
    """``(out, new_state)`` of one step; ``state`` is not touched (a copy is returned).

    Single-head arguments are read as nheads = dim heads of one channel each, so that a
    (batch, G, dstate) B groups channels (channel d reads group d // (dim // G)); the
    multi-head layout is read as given (head h reads group h // (nheads // G)).
    """
    cplx = np.iscomplexobj(A)
    work = np.complex128 if cplx else np.float64
    heads = np.ndim(state) == 4
    new = np.array(state, dtype=work)
    out = np.zeros(np.shape(x))
    x, dt = np.asarray(x, np.float64), np.asarray(dt, np.float64)
    A, B, C = (np.asarray(v, work) for v in (A, B, C))
    if B.ndim == 2:
        B, C = B[:, None], C[:, None]  # (batch, 1, dstate)
    if not heads:  # (batch, dim) -> (batch, dim heads, 1)
        new, x, dt, A = new[:, :, None], x[..., None], dt[..., None], A[:, None]
        out = out[..., None]
        D = None if D is None else np.asarray(D)[:, None]
        dt_bias = None if dt_bias is None else np.asarray(dt_bias)[:, None]
        z = None if z is None else np.asarray(z)[..., None]
    batch, nheads, hdim = x.shape
    dstate = A.shape[-1]
    groups = B.shape[1]
    for b in range(batch):
        row = b if state_batch_indices is None else int(state_batch_indices[b])
        if row < 0:
            continue  # padding: out stays 0, no state row
        for h in range(nheads):
            g = h // (nheads // groups)
            for p in range(hdim):
                step = dt[b, h, p] + (0.0 if dt_bias is None else float(dt_bias[h, p]))
                if dt_softplus:
                    step = step if step > 20 else math.log1p(math.exp(step))
                acc = 0.0
                for n in range(dstate):
                    a = step * A[h, p, n]
                    decay = cmath.exp(a) if cplx else math.exp(a)
                    hn = decay * new[row, h, p, n] + step * B[b, g, n] * x[b, h, p]
                    new[row, h, p, n] = hn
                    acc += C[b, g, n] * hn
                y = 2.0 * acc.real if cplx else acc
                if D is not None:
                    y += float(D[h, p]) * x[b, h, p]
                if z is not None:
                    zz = float(z[b, h, p])
                    y *= zz / (1.0 + math.exp(-zz))
                out[b, h, p] = y
    if not heads:
        new, out = new[:, :, 0], out[..., 0]
    return out, new


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------

#: (layout, G): single-head without groups, with channel groups; multi-head with 1, 2, H groups
LAYOUTS = [("single", None), ("single", 2), ("heads", 1), ("heads", 2), ("heads", 4)]
LAYOUT_IDS = [f"{lay}-G{g}" for lay, g in LAYOUTS]


def step_case(rng, layout="heads", groups=2, *, batch=3, nheads=4, hdim=2, dstate=3,
              rows=None, extras=True, complex_=False, dtype=np.float64):
    """Random valid arguments of one decoding step, keyword arguments.

    ``rows``: the state has that many rows (a cache, for ``state_batch_indices``).
    """
    inner = (nheads, hdim) if layout == "heads" else (nheads * hdim,)
    rows = batch if rows is None else rows
    bc = (batch, dstate) if groups is None else (batch, groups, dstate)
    kw = dict(state=rng.standard_normal((rows,) + inner + (dstate,)),
              x=rng.standard_normal((batch,) + inner),
              dt=0.05 + 0.5 * rng.random((batch,) + inner),
              A=-np.exp(rng.standard_normal(inner + (dstate,))),
              B=rng.standard_normal(bc), C=rng.standard_normal(bc))
    kw = {k: v.astype(dtype) for k, v in kw.items()}
    if complex_:
        kw["A"] = kw["A"] + 1j * np.pi * rng.standard_normal(kw["A"].shape)
        kw["state"] = kw["state"] + 1j * rng.standard_normal(kw["state"].shape)
        kw["B"] = kw["B"] + 1j * rng.standard_normal(bc)
    if extras:
        kw.update(D=rng.standard_normal(inner).astype(dtype),
                  z=rng.standard_normal((batch,) + inner).astype(dtype),
                  dt_bias=rng.standard_normal(inner).astype(dtype),
                  dt=rng.standard_normal((batch,) + inner).astype(dtype), dt_softplus=True)
    return kw


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


# ---------------------------------------------------------------------------
# the official form: in place, layouts, groups, indices, every optional argument
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout,groups", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "D-z-bias-softplus"])
def test_update_in_place_matches_the_loop_oracle(backend, rng, layout, groups, extras):
    kw = step_case(rng, layout, groups, extras=extras)
    out_ref, new_ref = loop_oracle(**kw)
    state = kw.pop("state")
    before = state.copy()
    out = fast.selective_state_update(state, **kw, backend=backend)
    assert out.shape == kw["x"].shape and out.dtype == kw["x"].dtype
    assert state.dtype == before.dtype
    assert not np.array_equal(state, before)  # written in place
    assert_close(out, out_ref, kind="backend", err_msg="out")
    assert_close(state, new_ref, kind="backend", err_msg="state")


@pytest.mark.parametrize("name", ["D", "z", "dt_bias", "dt_softplus"])
def test_each_optional_argument_alone(backend, rng, name):
    kw = step_case(rng, "heads", 2, extras=False)
    extra = step_case(np.random.default_rng(1), "heads", 2, extras=True)
    kw[name] = np.abs(extra[name]) if name == "dt_bias" else extra[name]  # steps stay >= 0
    if name == "dt_softplus":
        kw["dt"] = extra["dt"]  # negative steps, made positive by the softplus
    out_ref, new_ref = loop_oracle(**kw)
    out = fast.selective_state_update(**kw, backend=backend)
    assert_close(out, out_ref, kind="backend", err_msg="out")
    assert_close(kw["state"], new_ref, kind="backend", err_msg="state")


@pytest.mark.parametrize("backend", SIM_BACKENDS, indirect=True)  # cuda: simulator
@pytest.mark.parametrize("layout,groups", [("single", None), ("heads", 2)],
                         ids=["single", "heads-G2"])
def test_state_batch_indices_update_only_their_rows(backend, rng, layout, groups):
    kw = step_case(rng, layout, groups, batch=4, rows=7)
    idx = np.array([5, 0, -1, 3])  # the third entry is padding
    out_ref, new_ref = loop_oracle(**kw, state_batch_indices=idx)
    state = kw["state"]
    before = state.copy()
    out = fast.selective_state_update(**kw, state_batch_indices=idx, backend=backend)
    assert_close(out, out_ref, kind="backend", err_msg="out")
    assert_close(state, new_ref, kind="backend", err_msg="state")
    np.testing.assert_array_equal(out[2], 0.0)  # padding: output 0
    untouched = [1, 2, 4, 6]
    np.testing.assert_array_equal(state[untouched], before[untouched])  # bit for bit
    assert not np.array_equal(state[[5, 0, 3]], before[[5, 0, 3]])


@pytest.mark.parametrize("backend", SIM_BACKENDS, indirect=True)  # cuda: simulator
def test_float32_state_and_strided_state_are_updated_in_their_memory(backend, rng):
    kw = step_case(rng, "heads", 2, dtype=np.float32)
    big = np.zeros((3, 2) + kw["state"].shape[1:], np.float32)
    big[:, 1] = kw["state"]
    state = big[:, 1]  # a strided view into big
    kw["state"] = state
    out_ref, new_ref = loop_oracle(**kw)
    out = fast.selective_state_update(**kw, backend=backend)
    assert out.dtype == np.float32 and state.dtype == np.float32
    assert_close(out, out_ref, kind="backend", dtype=np.float32)
    assert_close(big[:, 1], new_ref, kind="backend", dtype=np.float32)
    np.testing.assert_array_equal(big[:, 0], 0.0)


@pytest.mark.parametrize("layout,groups", [("single", 2), ("heads", 2)])
def test_complex_A_updates_a_complex_state(rng, layout, groups):
    for backend in ("ref", "numba"):  # the cuda backend has real A only
        kw = step_case(rng, layout, groups, complex_=True)
        out_ref, new_ref = loop_oracle(**kw)
        out = fast.selective_state_update(**kw, backend=backend)
        assert out.dtype == np.float64 and kw["state"].dtype == np.complex128
        assert_close(out, out_ref, kind="backend", err_msg=backend)
        assert_close(kw["state"], new_ref, kind="backend", err_msg=backend)


@pytest.mark.parametrize("backend", SIM_BACKENDS, indirect=True)  # cuda: simulator
def test_step_is_the_functional_form_and_leaves_state_alone(backend, rng):
    kw = step_case(rng, "heads", 2)
    state = kw.pop("state")
    before = state.copy()
    y, new = fast.selective_state_step(state, **kw, backend=backend)
    np.testing.assert_array_equal(state, before)
    out = fast.selective_state_update(state, **kw, backend=backend)
    assert_close(y, out, kind="exact")
    assert_close(new, state, kind="exact")
    assert new.shape == state.shape and new.dtype == state.dtype


def test_steps_reproduce_the_scan_in_the_multi_head_layout(rng):
    """Heads are channels of the scan: T in-place steps = one scan of length T."""
    batch, nheads, hdim, dstate, T = 2, 4, 2, 3, 5
    dim = nheads * hdim
    u = rng.standard_normal((batch, dim, T))
    delta = 0.05 + 0.5 * rng.random((batch, dim, T))
    A = -np.exp(rng.standard_normal((dim, dstate)))
    Bv = rng.standard_normal((batch, 2, dstate, T))
    Cv = rng.standard_normal((batch, 2, dstate, T))
    y_scan, last = ssm_ref.selective_scan(u, delta, A, Bv, Cv, return_last_state=True)
    state = np.zeros((batch, nheads, hdim, dstate))
    heads = (batch, nheads, hdim)
    ys = [ssm_ref.selective_state_update(state, u[..., t].reshape(heads),
                                         delta[..., t].reshape(heads),
                                         A.reshape(nheads, hdim, dstate), Bv[..., t],
                                         Cv[..., t])
          for t in range(T)]
    assert_close(np.stack(ys, -1).reshape(batch, dim, T), y_scan, kind="exact")
    assert_close(state.reshape(batch, dim, dstate), last, kind="exact")


# ---------------------------------------------------------------------------
# bad input: clear errors naming the argument, same on every backend
# ---------------------------------------------------------------------------

def _error(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except (ValueError, TypeError) as exc:
        return type(exc), str(exc)
    return None


BAD = [
    ("state_batch_indices", np.array([0, 1, 7]), ValueError,
     "state_batch_indices has entries up to 7"),
    ("state_batch_indices", np.array([1, 1, 0]), ValueError, "state_batch_indices repeats row"),
    ("state_batch_indices", np.array([0.0, 1.0, 2.0]), TypeError, "state_batch_indices has dtype"),
    ("state_batch_indices", np.array([0, 1]), ValueError, "state_batch_indices has shape"),
    ("x", np.ones((0, 4, 2)), ValueError, "empty sizes: batch=0"),
    ("A", -np.ones((4, 2, 0)), ValueError, "empty sizes: .*N=0"),
    ("B", np.ones((3, 3, 3)), ValueError, "G = 3 must divide the number of heads H = 4"),
    ("D", np.ones(8), ValueError, "Parameter D has shape"),
    ("x", np.ones((3, 8)), ValueError, "Parameter x has shape"),
    ("A", -np.ones((8, 3)), ValueError, "Parameter A has shape"),
    ("state", np.zeros((3, 4, 2, 3)).tolist(), TypeError, "Parameter state is a list"),
    ("state", np.zeros((3, 4, 2, 3), np.int64), TypeError, "Parameter state has dtype int64"),
    ("dt", -np.ones((3, 4, 2)), ValueError, "negative step"),
]


@pytest.mark.parametrize("arg,value,exc,match", BAD, ids=[f"{a}-{i}" for i, (a, *_) in
                                                         enumerate(BAD)])
def test_bad_input_is_refused_by_name(backend, rng, arg, value, exc, match):
    kw = step_case(rng, "heads", 2, extras=False)
    kw[arg] = value
    if arg == "x":
        kw["dt"] = np.ones_like(value)
    if arg == "state_batch_indices":
        kw["state"] = np.zeros((7,) + kw["state"].shape[1:])
    before = None if arg == "state" else kw["state"].copy()
    with pytest.raises(exc, match=match):
        fast.selective_state_update(**kw, backend=backend)
    if before is not None:
        np.testing.assert_array_equal(kw["state"], before)  # nothing written
    assert _error(fast.selective_state_update, **kw, backend=backend) == \
        _error(ssm_ref.selective_state_update, **kw)


def test_read_only_state_and_real_state_with_complex_A_are_refused(rng):
    kw = step_case(rng, "heads", 2, extras=False)
    kw["state"].flags.writeable = False
    with pytest.raises(ValueError, match="Parameter state is read-only"):
        ssm_ref.selective_state_update(**kw)
    kw = step_case(rng, "heads", 2, extras=False, complex_=True)
    kw["state"] = kw["state"].real.copy()
    with pytest.raises(TypeError, match="Parameter state is real .* A is complex"):
        ssm_ref.selective_state_update(**kw)
    y, new = ssm_ref.selective_state_step(**kw)  # the functional form returns a complex state
    assert new.dtype == np.complex128


def test_empty_sizes_are_refused_by_the_functional_form_too(rng):
    kw = step_case(rng, "single", None, extras=False)
    kw.update(x=np.ones((0, 8)), dt=np.ones((0, 8)), state=np.zeros((0, 8, 3)),
              B=np.ones((0, 3)), C=np.ones((0, 3)))
    for fn in (ssm_ref.selective_state_step, ssm_ref.selective_state_update):
        with pytest.raises(ValueError, match="empty sizes: batch=0"):
            fn(**kw)


# ---------------------------------------------------------------------------
# numba: mixed precision and overflow, against the float64 loop
# ---------------------------------------------------------------------------

def _mixed_cases():
    f32 = np.float32
    base = dict(state=np.ones((1, 2, 2), f32), x=np.ones((1, 2), f32),
                dt=np.full((1, 2), 0.5), A=-np.ones((2, 2)),
                B=np.ones((1, 2), f32), C=np.ones((1, 2), f32))
    huge_dt = dict(base, x=np.zeros((1, 2), f32), dt=np.full((1, 2), 1e300))  # dt float64
    huge_A = dict(base, dt=np.zeros((1, 2)), A=np.full((2, 2), -1e300))  # zero step
    overflow = dict(base, x=np.full((1, 2), 1e30, f32), dt=np.full((1, 2), 1e10, f32),
                    B=np.full((1, 2), 1e-20, f32), state=np.zeros((1, 2, 2), f32))
    return {"float64 dt = 1e300, x = 0": huge_dt, "float64 A = -1e300, zero step": huge_A,
            "dt * x overflows float32, result fits": overflow}


@pytest.mark.parametrize("name", list(_mixed_cases()))
def test_numba_step_mixed_precision_matches_the_float64_loop(name):
    kw = _mixed_cases()[name]
    out_ref, new_ref = loop_oracle(**kw)
    assert np.all(np.isfinite(out_ref)) and np.all(np.isfinite(new_ref.astype(np.float32)))
    y, new = fast.selective_state_step(**kw, backend="numba")
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(new)), (y, new)
    assert_close(y, out_ref, kind="backend", dtype=np.float32, err_msg="y")
    assert_close(new, new_ref, kind="backend", dtype=np.float32, err_msg="new state")
    state = kw["state"].copy()
    out = fast.selective_state_update(**dict(kw, state=state), backend="numba")
    assert_close(out, out_ref, kind="backend", dtype=np.float32, err_msg="out")
    assert_close(state, new_ref, kind="backend", dtype=np.float32, err_msg="state")
