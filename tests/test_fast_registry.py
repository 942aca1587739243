"""The backend registry of ``fast``: names, availability, "auto", no silent fallback."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import scan_case
from conftest import ROOT, assert_close, on_cuda_simulator, real_gpu_available

import fast
import ssm_ref


def _scan_inputs(rng):
    """B variable, C constant, with D and z; no softplus, delta_bias or h0 (tests/cases.py)."""
    return scan_case(rng, "variable", "constant", batch=2, dim=3, length=7, dstate=4,
                     extras=False, D=True, z=True)


def test_backends_lists_every_name_with_a_reason():
    status = fast.backends()
    assert tuple(status) == fast.BACKENDS == ("ref", "numba", "cuda")
    for name, (available, reason) in status.items():
        assert isinstance(available, bool) and isinstance(reason, str) and reason, name
    assert status["ref"][0] and status["numba"][0]
    assert "Numba" in status["numba"][1] and "thread" in status["numba"][1]
    if not on_cuda_simulator() and not real_gpu_available():
        assert status["cuda"][0] is False


@pytest.mark.parametrize("backend", ["ref", "numba", "auto"])
def test_every_cpu_backend_gives_the_reference_result(rng, backend):
    kw = _scan_inputs(rng)
    y, last = fast.selective_scan(**kw, return_last_state=True, backend=backend)
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert_close(y, y_ref, kind="backend")
    assert_close(last, last_ref, kind="backend")
    dout = rng.standard_normal(y.shape)
    g = fast.selective_scan_backward(dout, **kw, backend=backend)
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    for key, value in g_ref.items():
        if value is None:
            assert g[key] is None
        else:
            assert_close(g[key], value, kind="backend", err_msg=key)
    step = dict(state=rng.standard_normal((2, 3, 4)), x=kw["u"][:, :, 0],
                dt=kw["delta"][:, :, 0], A=kw["A"], B=kw["B"][..., 0],
                C=rng.standard_normal((2, 4)))
    for got, want in zip(fast.selective_state_step(**step, backend=backend),
                         ssm_ref.selective_state_step(**step)):
        assert_close(got, want, kind="backend")


def test_auto_picks_numba_for_numpy(rng, monkeypatch):
    calls = []
    from fast import numba_cpu
    original = numba_cpu.selective_scan
    monkeypatch.setattr(numba_cpu, "selective_scan",
                        lambda *a, **k: calls.append("numba") or original(*a, **k))
    fast.selective_scan(**_scan_inputs(rng))
    assert calls == ["numba"]


def test_auto_picks_cuda_for_gpu_arrays(rng):
    class FakeDeviceArray:  # anything with __cuda_array_interface__ counts as on the GPU
        __cuda_array_interface__ = {}

    from fast import _registry
    assert _registry._on_gpu(FakeDeviceArray())
    assert not _registry._on_gpu(np.ones(3))
    if not on_cuda_simulator() and not real_gpu_available():
        kw = _scan_inputs(rng)
        kw["u"] = FakeDeviceArray()
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
            fast.selective_scan(**kw)  # auto -> cuda -> unavailable: raises, no fallback


@pytest.mark.parametrize("bad", ["gpu", "Numba", "", None, 3])
def test_unknown_backend_raises_value_error(rng, bad):
    kw = _scan_inputs(rng)
    with pytest.raises(ValueError, match="Parameter backend = .* is not one of"):
        fast.selective_scan(**kw, backend=bad)
    with pytest.raises(ValueError, match="Parameter backend"):
        fast.selective_scan_backward(np.ones((2, 3, 7)), **kw, backend=bad)
    with pytest.raises(ValueError, match="Parameter backend"):
        fast.selective_state_update(np.zeros((2, 3, 4)), np.ones((2, 3)), np.ones((2, 3)),
                                    kw["A"], np.ones((2, 4)), np.ones((2, 4)), backend=bad)


@pytest.mark.skipif(on_cuda_simulator() or real_gpu_available(),
                    reason="a CUDA backend is available here")
def test_unavailable_cuda_raises_runtime_error_with_the_reason(rng):
    reason = fast.backends()["cuda"][1]
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available here") as info:
        fast.selective_scan(**_scan_inputs(rng), backend="cuda")
    assert reason in str(info.value)


def test_bad_input_raises_the_reference_error(rng):
    kw = _scan_inputs(rng)
    kw["C"] = np.ones((4, 4))
    with pytest.raises(ValueError) as ref_info:
        ssm_ref.selective_scan(**kw)
    for backend in ("ref", "numba", "auto"):
        with pytest.raises(ValueError) as info:
            fast.selective_scan(**kw, backend=backend)
        assert str(info.value) == str(ref_info.value)


def test_import_fast_and_cpu_backends_do_not_import_numba_cuda():
    """So NUMBA_ENABLE_CUDASIM can be set after ``import fast``."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import fast
        assert "numba" not in sys.modules, "import fast imported numba"
        u = np.ones((1, 1, 3))
        for backend in ("ref", "numba", "auto"):
            fast.selective_scan(u, u, [[-1.0]], [[1.0]], [[1.0]], backend=backend)
        cuda = [m for m in sys.modules if m == "numba.cuda" or m.startswith("numba.cuda.")]
        assert not cuda, cuda
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
