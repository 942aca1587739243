"""The CUDA selective scan (fast.cuda_scan) against the reference, on Numba's CUDA simulator.

Run in a process of its own, with the simulator switched on before numba.cuda is imported:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -m cudasim tests/test_cuda_sim.py -p no:doctest

The simulator runs every GPU thread as a Python thread, about a thousand times slower
than a GPU, so the sizes are tiny (B=2, D=2, L=37, N=2) but always span several chunks,
the last one partial (37 = 16 + 16 + 5 with chunk_size=16), and several threads per
chunk, so the block scan, the carry between chunks and the padding are all exercised.
The oracle is ``ssm_ref`` computed in float64 (kind "backend" of the tolerance table),
and the official ``mamba_ssm`` golden values (kind "golden").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cases import GRAD_NAMES, scan_case
from conftest import assert_close, on_cuda_simulator

import ssm_ref as sr
from fast import cuda_scan as cs

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(not on_cuda_simulator(),
                       reason="needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported "
                              "(make test runs this file in a process of its own)"),
]

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"  # copies of ../shared/golden
BS, ND, L, N = 2, 2, 37, 2  # several chunks at chunk_size=16; the last one partial
LAUNCH = dict(chunk_size=16, threads=8)  # 2 steps per thread, 3 chunks


#: The forms these tests name, as (form, G): G = 1, every channel shares the group;
#: G = 2 = D, one group per channel.
SIM_FORMS = {"const": ("constant", 1), "var": ("variable", 1),
             "group1": ("grouped", 1), "group2": ("grouped", 2)}


def make_inputs(rng, form_B="var", form_C="var", dtype=np.float64, options=True,
                Bs=BS, nD=ND, L=L, N=N):
    """A scan of the simulator's tiny size (tests/cases.py), always with delta_softplus;
    ``options`` adds D, z, delta_bias, h0."""
    (fb, gb), (fc, gc) = SIM_FORMS[form_B], SIM_FORMS[form_C]
    return scan_case(rng, fb, fc, dtype=dtype, batch=Bs, dim=nD, length=L, dstate=N,
                     groups=(gb, gc), extras=options, softplus=True)


def f64(args):
    """The same arguments in float64, for the reference."""
    return {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
            for k, v in args.items()}


# ----------------------------------------------------------------------------- forward


def test_status_reports_the_simulator():
    ok, reason = cs.status()
    assert ok is True
    assert "simulator" in reason


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("form_B, form_C", [("const", "const"), ("var", "var"),
                                            ("group1", "var"), ("const", "group2")])
def test_forward_matches_reference(rng, form_B, form_C, dtype):
    args = make_inputs(rng, form_B, form_C, dtype)
    y, last = cs.selective_scan(**args, return_last_state=True, **LAUNCH)
    y_ref, last_ref = sr.selective_scan(**f64(args), return_last_state=True)
    assert y.dtype == dtype and last.dtype == dtype
    assert_close(y, y_ref, kind="backend", dtype=dtype, err_msg=f"y, B {form_B}, C {form_C}")
    assert_close(last, last_ref, kind="backend", dtype=dtype, err_msg="last state")


@pytest.mark.parametrize("options", [
    dict(),  # plain scan: no D, z, bias, softplus, h0
    dict(D=True, delta_softplus=True),
    dict(h0=True, delta_bias=True),
    dict(z=True),
])
def test_forward_optional_arguments(rng, options):
    full = make_inputs(rng, "var", "const")
    args = {k: full[k] for k in ("u", "delta", "A", "B", "C")}
    args["delta"] = np.abs(args["delta"])  # no softplus: steps must be >= 0
    args["delta_softplus"] = options.get("delta_softplus", False)
    for name in ("D", "z", "delta_bias", "h0"):
        if options.get(name):
            args[name] = np.abs(full[name]) if name == "delta_bias" else full[name]
    y, last = cs.selective_scan(**args, return_last_state=True, **LAUNCH)
    y_ref, last_ref = sr.selective_scan(**args, return_last_state=True)
    assert_close(y, y_ref, kind="backend", err_msg=f"y with {sorted(options)}")
    assert_close(last, last_ref, kind="backend", err_msg="last state")


@pytest.mark.parametrize("u_dtype, A_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_last_state_in_A_dtype(rng, u_dtype, A_dtype):
    """As the reference and the official package: the last state in A's dtype."""
    args = make_inputs(rng, "var", "const", u_dtype)
    args["A"] = args["A"].astype(A_dtype)
    y, last = cs.selective_scan(**args, return_last_state=True, **LAUNCH)
    _, last_ref = sr.selective_scan(**f64(args), return_last_state=True)
    assert y.dtype == u_dtype and last.dtype == A_dtype
    # the kernel computes in u's dtype: a float32 u (or A) leaves the state float32-precise
    assert_close(last, last_ref, kind="backend", dtype=A_dtype, precision=np.float32)


@pytest.mark.parametrize("chunk_size, threads", [(16, 16), (32, 4), (8, 8), (64, 2)])
def test_forward_launch_shapes(rng, chunk_size, threads):
    """1, 8, 1 and 32 steps per thread; 3, 2, 5 and 1 chunks: one answer."""
    args = make_inputs(rng, "group1", "var")
    y = cs.selective_scan(**args, chunk_size=chunk_size, threads=threads)
    assert_close(y, sr.selective_scan(**args), kind="backend",
                 err_msg=f"chunk_size={chunk_size}, threads={threads}")


def test_forward_default_launch(rng):
    args = make_inputs(rng, Bs=1, nD=1, L=20)
    assert_close(cs.selective_scan(**args), sr.selective_scan(**args), kind="backend")


def test_chunk_states_are_the_states_at_chunk_ends(rng):
    """The only states the forward writes: h at the end of every chunk, (B, D, n_chunks, N)."""
    args = make_inputs(rng, "var", "var")
    s, _, _ = cs._validate_scan(
        *(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
        args["delta_softplus"], args["h0"])
    assert s.delta_softplus
    mover, s, _ = cs._start(s)
    dev = cs._prepare(mover, s, s.out_dtype)
    _, states = cs._launch_forward(mover, dev, s, s.out_dtype, 16, 8)
    states = states[0].copy_to_host()
    assert states.shape == (BS, ND, 3, N)  # ceil(37 / 16) chunks, never (B, D, L, N)
    for c, t_end in enumerate([16, 32, 37]):
        part = dict(args, u=args["u"][..., :t_end], delta=args["delta"][..., :t_end],
                    z=args["z"][..., :t_end], B=args["B"][..., :t_end], C=args["C"][..., :t_end])
        _, h = sr.selective_scan(**part, return_last_state=True)
        assert_close(states[:, :, c], h, kind="backend", err_msg=f"state after chunk {c}")


def test_numba_device_arrays_in_and_out(rng):
    """Device arrays are used in place and the results stay on the device."""
    from numba import cuda
    args = make_inputs(rng, "const", "var")
    dev = {k: (cuda.to_device(v) if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    y = cs.selective_scan(**dev, **LAUNCH)
    assert getattr(y, "__cuda_ndarray__", False)
    assert_close(y.copy_to_host(), sr.selective_scan(**args), kind="backend")


@pytest.mark.parametrize("name", ["selective_scan_var_real", "selective_scan_const_real"])
def test_forward_matches_official_golden(name):
    """Against outputs of the official mamba_ssm selective_scan_ref (float32, B=2, D=6, L=70)."""
    g = np.load(GOLDEN / f"{name}.npz")
    y, last = cs.selective_scan(g["u"], g["delta"], g["A"], g["B"], g["C"], g["D"], g["z"],
                                g["delta_bias"], bool(g["delta_softplus"]),
                                return_last_state=True, chunk_size=32, threads=4)
    assert_close(y, g["out"], kind="golden", err_msg=name)
    assert_close(last, g["last_state"], kind="golden", err_msg=name)


# ----------------------------------------------------------------------------- backward


def _check_grads(grads, ref, dtype):
    assert set(grads) == set(GRAD_NAMES)
    for name in GRAD_NAMES:
        if ref[name] is None:
            assert grads[name] is None, name
            continue
        assert grads[name].shape == ref[name].shape, name
        assert grads[name].dtype == dtype, name
        assert_close(grads[name], ref[name], kind="backend", dtype=dtype, err_msg=f"d{name}")


@pytest.mark.parametrize("form_B, form_C, dtype", [
    ("const", "const", np.float64),
    ("var", "var", np.float64),
    ("group1", "group2", np.float64),
    ("var", "const", np.float32),
])
def test_backward_matches_reference(rng, form_B, form_C, dtype):
    args = make_inputs(rng, form_B, form_C, dtype)
    dout = rng.standard_normal((BS, ND, L)).astype(dtype)
    dlast = rng.standard_normal((BS, ND, N)).astype(dtype)
    grads = cs.selective_scan_backward(dout, **args, dlast_state=dlast, **LAUNCH)
    ref = sr.selective_scan_backward(dout.astype(np.float64), **f64(args),
                                     dlast_state=dlast.astype(np.float64))
    _check_grads(grads, ref, dtype)


def test_backward_plain_scan(rng):
    """No D, z, bias, softplus, h0 or dlast_state: their gradients are None."""
    args = make_inputs(rng, "var", "group1", options=False)
    args["delta"] = np.abs(args["delta"])
    args["delta_softplus"] = False
    dout = rng.standard_normal((BS, ND, L))
    grads = cs.selective_scan_backward(dout, **args, **LAUNCH)
    _check_grads(grads, sr.selective_scan_backward(dout, **args), np.float64)


def test_backward_bias_without_softplus_one_step_per_thread(rng):
    args = make_inputs(rng, "const", "var")
    args["delta"] = np.abs(args["delta"])
    args["delta_bias"] = np.abs(args["delta_bias"])
    args["delta_softplus"] = False
    dout = rng.standard_normal((BS, ND, L))
    dlast = rng.standard_normal((BS, ND, N))
    grads = cs.selective_scan_backward(dout, **args, dlast_state=dlast, chunk_size=16,
                                       threads=16)
    _check_grads(grads, sr.selective_scan_backward(dout, **args, dlast_state=dlast),
                 np.float64)


# ----------------------------------------------------------------------------- decoding step


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("grouped", [False, True])
def test_state_update_matches_reference(rng, dtype, grouped):
    Bs, nD, N_ = 2, 4, 3
    bc = (Bs, 2, N_) if grouped else (Bs, N_)
    args = dict(state=rng.standard_normal((Bs, nD, N_)), x=rng.standard_normal((Bs, nD)),
                dt=rng.uniform(-1, 1, (Bs, nD)), A=-rng.uniform(0.2, 2, (nD, N_)),
                B=rng.standard_normal(bc), C=rng.standard_normal(bc),
                D=rng.standard_normal(nD), z=rng.standard_normal((Bs, nD)),
                dt_bias=rng.uniform(-0.5, 0.5, nD))
    args = {k: v.astype(dtype) for k, v in args.items()}
    y, h = cs.selective_state_step(**args, dt_softplus=True)
    y_ref, h_ref = sr.selective_state_step(**f64(args), dt_softplus=True)
    assert y.dtype == dtype and h.dtype == dtype
    assert_close(y, y_ref, kind="backend", dtype=dtype, err_msg="y")
    assert_close(h, h_ref, kind="backend", dtype=dtype, err_msg="new state")


def test_state_update_steps_reproduce_the_scan(rng):
    args = make_inputs(rng, "var", "var", Bs=1, nD=2, L=5)
    y_scan = sr.selective_scan(**args)
    h = args["h0"]
    for t in range(5):
        y, h = cs.selective_state_step(h, args["u"][..., t], args["delta"][..., t], args["A"],
                                         args["B"][..., t], args["C"][..., t], args["D"],
                                         args["z"][..., t], args["delta_bias"], True)
        assert_close(y, y_scan[..., t], kind="backend", err_msg=f"step {t}")


# ----------------------------------------------------------------------------- bad input


def test_complex_A_is_refused_by_name(rng):
    args = make_inputs(rng)
    args["A"] = args["A"] + 1j
    with pytest.raises(NotImplementedError, match="Parameter A is complex"):
        cs.selective_scan(**args, **LAUNCH)


@pytest.mark.parametrize("launch, match", [
    (dict(chunk_size=16, threads=6), "threads = 6 must be a power of two"),
    (dict(chunk_size=20, threads=8), "chunk_size = 20 must be a multiple of threads = 8"),
    (dict(chunk_size=0, threads=8), "chunk_size = 0 must be >= 1"),
])
def test_bad_launch_parameters(rng, launch, match):
    with pytest.raises(ValueError, match=match):
        cs.selective_scan(**make_inputs(rng), **launch)


def test_bad_shapes_raise_the_reference_messages(rng):
    args = make_inputs(rng)
    args["B"] = args["B"][..., :-1]
    with pytest.raises(ValueError, match=r"Parameter B has shape \(2, 2, 36\)"):
        cs.selective_scan(**args, **LAUNCH)
    args = make_inputs(rng)
    with pytest.raises(ValueError, match="Parameter dout has shape"):
        cs.selective_scan_backward(np.ones((1, 2, 3)), **args, **LAUNCH)
    args["u"] = args["u"].copy()
    args["u"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="Parameter u has 1 non-finite"):
        cs.selective_scan(**args, **LAUNCH)


@pytest.mark.parametrize("layout,groups,indices", [
    ("single", None, None), ("single", 2, [2, -1, 0]), ("heads", 2, None),
    ("heads", 4, [3, 0, -1])])
def test_official_state_update_in_place(rng, layout, groups, indices):
    """The official form on the simulator: state written in place (rows of a cache with
    indices, the other rows bit for bit untouched), against the float64 loop oracle."""
    from test_state_update import loop_oracle, step_case
    kw = step_case(rng, layout, groups, rows=None if indices is None else 5)
    idx = None if indices is None else np.array(indices)
    out_ref, new_ref = loop_oracle(**kw, state_batch_indices=idx)
    before = kw["state"].copy()
    out = cs.selective_state_update(**kw, state_batch_indices=idx)
    assert out.shape == kw["x"].shape and out.dtype == kw["x"].dtype
    assert_close(out, out_ref, kind="backend", err_msg="out")
    assert_close(kw["state"], new_ref, kind="backend", err_msg="state")
    if idx is not None:
        untouched = sorted(set(range(5)) - set(indices))
        np.testing.assert_array_equal(kw["state"][untouched], before[untouched])


def test_bfloat16_is_computed_in_float32(rng):
    """ml_dtypes.bfloat16 host arrays: computed in float32, results back in bfloat16."""
    from test_parity import BF16, _bf16, _f32
    kw = _bf16(make_inputs(rng, Bs=1, nD=2, L=20))
    y, last = cs.selective_scan(**kw, return_last_state=True, **LAUNCH)
    y32, last32 = sr.selective_scan(**_f32(kw), return_last_state=True)
    assert y.dtype == BF16 and last.dtype == BF16
    assert_close(y, y32.astype(BF16), kind="backend")
    assert_close(last, last32.astype(BF16), kind="backend")
    dout = rng.standard_normal(y.shape).astype(BF16)
    g = cs.selective_scan_backward(dout, **kw, **LAUNCH)
    g32 = sr.selective_scan_backward(dout.astype(np.float32), **_f32(kw))
    for name in GRAD_NAMES:
        if g32[name] is not None:
            assert g[name].dtype == BF16, name
            assert_close(g[name], g32[name].astype(BF16), kind="backend", err_msg=name)
