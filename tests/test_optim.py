"""Tests of ssm_ref.optim: AdamW and SGD against scalar re-implementations of the PyTorch
documentation's algorithms, the loss against SciPy and finite differences, clipping, the schedule.

The oracles here are written independently, one scalar at a time in Python floats, from
the pseudo-code of ``torch.optim.AdamW`` / ``torch.optim.SGD`` (PyTorch docs) and
Loshchilov & Hutter 2019 (arXiv:1711.05101), Algorithm 2.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special

from conftest import assert_close, numerical_gradient

from ssm_ref.optim import SGD, AdamW, clip_grad_norm, cosine_lr, global_norm, softmax_cross_entropy


# --------------------------------------------------------------------------- oracles
def adamw_oracle(theta, grads, lrs, beta1, beta2, eps, wd, dtype):
    """One scalar theta through len(grads) AdamW steps, rounding theta to ``dtype`` each step."""
    m = v = 0.0
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        theta = theta - lr * wd * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        theta = theta - lr * m_hat / (math.sqrt(v_hat) + eps)
        theta = float(dtype(theta))
    return theta


def sgd_oracle(theta, grads, lr, momentum, wd, nesterov, dtype):
    buf = None
    for g in grads:
        g = g + wd * theta
        buf = g if buf is None else momentum * buf + g
        step = g + momentum * buf if nesterov else buf
        theta = float(dtype(theta - lr * step))
    return theta


# --------------------------------------------------------------------------- AdamW
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_scalar_oracle(rng, dtype, wd):
    shapes = {"w": (3, 4), "b": (4,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    start = {k: v.copy() for k, v in params.items()}
    n_steps = 7
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()} for _ in range(n_steps)]
    lrs = [0.05 * (1 + 0.3 * math.sin(t)) for t in range(n_steps)]  # a varying schedule
    opt = AdamW(params, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    for g, lr in zip(grads, lrs):
        opt.step(g, lr=lr)
    for k in shapes:
        expected = np.empty(shapes[k])
        for i in np.ndindex(shapes[k]):
            expected[i] = adamw_oracle(float(start[k][i]), [float(g[k][i]) for g in grads],
                                       lrs, 0.8, 0.95, 1e-6, wd, dtype)
        assert params[k].dtype == dtype
        assert_close(params[k], expected.astype(dtype), kind="exact", err_msg=k)
    assert opt.t == n_steps


def adamw_per_parameter(params, grads, lrs, beta1, beta2, eps, wd, no_wd, work):
    """AdamW as a NumPy loop over the parameters, each in the working dtype ``work`` and
    rounded to its own dtype after each step (the PyTorch pseudo-code, array by array)."""
    m = {k: np.zeros(p.shape, work) for k, p in params.items()}
    v = {k: np.zeros(p.shape, work) for k, p in params.items()}
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        for k, p in params.items():
            gk = g[k].astype(work)
            m[k] = beta1 * m[k] + (1.0 - beta1) * gk
            v[k] = beta2 * v[k] + (1.0 - beta2) * (gk * gk)
            p64 = p.astype(work)
            p64 = p64 - lr * (0.0 if k in no_wd else wd) * p64
            p64 = p64 - lr * (m[k] / (1.0 - beta1 ** t)) / (np.sqrt(v[k] / (1.0 - beta2 ** t))
                                                             + eps)
            p[...] = p64.astype(p.dtype)
    return m, v


@pytest.mark.parametrize("param_dtype, state_dtype", [(np.float64, np.float64),
                                                      (np.float32, np.float64),
                                                      (np.float32, np.float32)])
def test_adamw_updates_all_parameters_as_one_vector_bit_for_bit(rng, param_dtype, state_dtype):
    """The flat step (every parameter at once) is the per-parameter loop to the last bit, for
    float32 training (state and arithmetic in float32) too; the state's arrays are views of
    the flat moments, and an optimiser restored from a state dict mid-way ends the same."""
    shapes = {"w": (3, 4), "b": (4,), "A_log": (2, 3), "scalar": ()}
    start = {k: rng.standard_normal(s).astype(param_dtype) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(param_dtype) for k, s in shapes.items()}
             for _ in range(6)]
    lrs = [0.05, 0.2, 0.01, 0.1, 0.03, 0.07]
    expected = {k: v.copy() for k, v in start.items()}
    m, v = adamw_per_parameter(expected, grads, lrs, 0.8, 0.95, 1e-6, 0.3, {"A_log"},
                               state_dtype)
    params = {k: v.copy() for k, v in start.items()}
    opt = AdamW(params, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3,
                no_weight_decay={"A_log"}, state_dtype=state_dtype)
    for g, lr in zip(grads[:3], lrs[:3]):
        opt.step(g, lr=lr)
    restored = {k: p.copy() for k, p in params.items()}
    opt2 = AdamW(restored, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3,
                 no_weight_decay={"A_log"}, state_dtype=state_dtype)
    opt2.load_state_dict({k: np.array(x) for k, x in opt.state_dict().items()})
    for g, lr in zip(grads[3:], lrs[3:]):
        opt.step(g, lr=lr)
        opt2.step(g, lr=lr)
    for k in shapes:
        for got in (params[k], restored[k]):
            assert got.dtype == param_dtype
            np.testing.assert_array_equal(got, expected[k], err_msg=k)
        np.testing.assert_array_equal(opt.state["exp_avg"][k], m[k], err_msg=k)
        np.testing.assert_array_equal(opt.state["exp_avg_sq"][k], v[k], err_msg=k)
        assert opt.state["exp_avg"][k].dtype == state_dtype


def test_adamw_reads_a_moment_set_by_hand(rng):
    """An array put into ``state`` by hand replaces the flat moment's part (the flat buffers
    are made again when the state's arrays are not their views)."""
    p1, p2 = {"w": np.ones(3), "b": np.ones(2)}, {"w": np.ones(3), "b": np.ones(2)}
    o1, o2 = AdamW(p1, lr=0.1), AdamW(p2, lr=0.1)
    g = {"w": np.array([1.0, -2.0, 3.0]), "b": np.array([0.5, 0.5])}
    o1.step(g)
    o2.step(g)
    o1.state["exp_avg"]["w"] = np.full(3, 7.0)  # by hand
    o2.state["exp_avg"]["w"][...] = 7.0  # the same through the view
    o1.step(g)
    o2.step(g)
    np.testing.assert_array_equal(p1["w"], p2["w"])
    np.testing.assert_array_equal(o1.state["exp_avg"]["w"], o2.state["exp_avg"]["w"])


def test_adamw_names_the_non_finite_gradient_and_changes_nothing(rng):
    params = {"w": np.ones(3), "b": np.ones(2)}
    opt = AdamW(params, lr=0.1)
    with pytest.raises(ValueError, match=r"grads\['b'\] has 1 non-finite"):
        opt.step({"w": np.ones(3), "b": np.array([1.0, np.nan])})
    assert opt.t == 0 and not opt.state["exp_avg"]
    np.testing.assert_array_equal(params["w"], np.ones(3))


def test_adamw_excludes_named_parameters_from_decay(rng):
    params = {"w": rng.standard_normal(5), "A_log": rng.standard_normal(3), "D": np.ones(3)}
    start = {k: v.copy() for k, v in params.items()}
    opt = AdamW(params, lr=0.1, weight_decay=0.5, no_weight_decay={"A_log", "D"})
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    for _ in range(3):
        opt.step(zeros)  # no gradient: only the decay can move a parameter
    np.testing.assert_array_equal(params["A_log"], start["A_log"])
    np.testing.assert_array_equal(params["D"], start["D"])
    assert_close(params["w"], start["w"] * (1 - 0.1 * 0.5) ** 3, kind="exact")


def test_adamw_updates_in_place(rng):
    w = rng.standard_normal(4)
    params = {"w": w}
    AdamW(params, lr=0.1).step({"w": np.ones(4)})
    assert params["w"] is w  # the model keeps its reference


def test_optimizer_state_round_trip_is_bitwise(rng):
    grads = [{"w": rng.standard_normal(6)} for _ in range(6)]
    init = rng.standard_normal(6)
    p1 = {"w": init.copy()}
    o1 = AdamW(p1, lr=0.03, weight_decay=0.1)
    for g in grads:
        o1.step(g)
    p2 = {"w": init.copy()}
    o2 = AdamW(p2, lr=0.03, weight_decay=0.1)
    for g in grads[:3]:
        o2.step(g)
    sd = {k: np.array(v) for k, v in o2.state_dict().items()}
    p3 = {"w": p2["w"].copy()}
    o3 = AdamW(p3, lr=0.03, weight_decay=0.1)
    o3.load_state_dict(sd)
    for g in grads[3:]:
        o3.step(g)
    np.testing.assert_array_equal(p3["w"], p1["w"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(no_weight_decay={"nope"}), "no_weight_decay"),
    (dict(lr=-1.0), "lr"),
    (dict(betas=(1.0, 0.9)), r"betas\[0\]"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_adamw_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW({"w": np.zeros(2)}, **kwargs)


def test_step_checks_grads():
    opt = AdamW({"w": np.zeros(2), "b": np.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        opt.step({"w": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.zeros(3), "b": np.zeros(1)})
    with pytest.raises(TypeError, match="params"):
        AdamW([np.zeros(2)])


# --------------------------------------------------------------------------- SGD
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sgd_matches_scalar_oracle(rng, nesterov, dtype):
    init = rng.standard_normal(5).astype(dtype)
    params = {"w": init.copy(), "D": init.copy()}
    grads = [{"w": g, "D": g} for g in rng.standard_normal((4, 5)).astype(dtype)]
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=nesterov,
              no_weight_decay={"D"})
    for g in grads:
        opt.step(g)
    for name, wd in (("w", 0.05), ("D", 0.0)):
        expected = [sgd_oracle(float(init[i]), [float(g[name][i]) for g in grads], 0.1, 0.9, wd,
                               nesterov, dtype) for i in range(5)]
        assert_close(params[name], np.array(expected, dtype=dtype), kind="exact", err_msg=name)


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_matches_scipy_log_softmax(rng, dtype):
    logits = (3 * rng.standard_normal((6, 5))).astype(dtype)
    labels = rng.integers(0, 5, size=6)
    loss, d = softmax_cross_entropy(logits, labels)
    log_p = scipy.special.log_softmax(logits.astype(np.float64), axis=1)
    # the loss is computed in float64 from the given logits, whatever their dtype
    assert_close(np.array(loss), np.array(-log_p[np.arange(6), labels].mean()), kind="exact",
                 dtype=np.float64)
    onehot = np.eye(5)[labels]
    assert d.dtype == dtype
    assert_close(d, ((np.exp(log_p) - onehot) / 6).astype(dtype), kind="exact")


def test_cross_entropy_gradient_matches_finite_differences(rng):
    logits = rng.standard_normal((4, 3))
    labels = np.array([0, 2, 1, 2])
    _, d = softmax_cross_entropy(logits, labels)
    fd = numerical_gradient(lambda z: softmax_cross_entropy(z, labels)[0], logits)
    assert_close(d, fd, kind="fd")


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [-1000.0, 0.0], [1e4, 1e4]])
    loss, d = softmax_cross_entropy(logits, np.array([0, 0, 1]))
    # exact values: log(1 + e^-1000) ≈ 0, 1000 + log(1 + e^-1000) ≈ 1000, log 2
    assert_close(np.array(loss), np.array((0.0 + 1000.0 + math.log(2)) / 3), kind="exact")
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("labels, exc, match", [
    (np.array([0, 3]), ValueError, r"\[0, 2\]"),
    (np.array([0, -1]), ValueError, "labels"),
    (np.array([0.0, 1.0]), TypeError, "integer"),
    (np.array([0, 1, 1]), ValueError, r"\(2,\)"),
])
def test_cross_entropy_bad_labels(labels, exc, match):
    with pytest.raises(exc, match=match):
        softmax_cross_entropy(np.zeros((2, 3)), labels)


def test_cross_entropy_rejects_bad_logits():
    with pytest.raises(ValueError, match="logits"):
        softmax_cross_entropy(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match="non-finite"):
        softmax_cross_entropy(np.array([[np.nan, 0.0]]), np.array([0]))


# --------------------------------------------------------------------------- clipping
def test_clip_scales_to_max_norm_keeping_direction(rng):
    grads = {"a": rng.standard_normal((3, 3)), "b": rng.standard_normal(4)}
    before = {k: v.copy() for k, v in grads.items()}
    norm0 = math.sqrt(sum(float((v ** 2).sum()) for v in before.values()))
    returned = clip_grad_norm(grads, 0.5)
    assert_close(np.array(returned), np.array(norm0), kind="exact")
    assert_close(np.array(global_norm(grads)), np.array(0.5 * norm0 / (norm0 + 1e-6)), kind="exact")
    for k in grads:  # same direction: a common positive factor
        assert_close(grads[k], before[k] * (0.5 / (norm0 + 1e-6)), kind="exact", err_msg=k)


def test_clip_leaves_small_gradients_bitwise_unchanged(rng):
    grads = {"a": 1e-3 * rng.standard_normal(5).astype(np.float32)}
    before = grads["a"].copy()
    clip_grad_norm(grads, 1.0)
    np.testing.assert_array_equal(grads["a"], before)
    assert grads["a"].dtype == np.float32


def test_clip_refuses_non_finite_and_bad_max():
    with pytest.raises(ValueError, match="non-finite"):
        clip_grad_norm({"a": np.array([np.inf])}, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm({"a": np.ones(2)}, 0.0)


# --------------------------------------------------------------------------- schedule
def test_cosine_schedule_shape():
    total, warm, base, low = 100, 10, 0.1, 0.001
    lrs = [cosine_lr(s, total, base, warmup_steps=warm, min_lr=low) for s in range(total)]
    assert_close(np.array(lrs[:warm]), base * np.arange(1, warm + 1) / warm, kind="exact")
    assert lrs[warm] == base  # the peak, right after warmup
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # non-increasing
    mid = warm + (total - warm) // 2  # cos(pi/2) = 0: halfway between base and min
    assert_close(np.array(lrs[mid]), np.array((base + low) / 2), kind="exact")
    assert cosine_lr(total, total, base, warm, low) == pytest.approx(low)


@pytest.mark.parametrize("args, match", [
    ((-1, 10, 0.1), "step"), ((0, 0, 0.1), "total_steps"), ((0, 10, 0.0), "base_lr"),
])
def test_cosine_schedule_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        cosine_lr(*args)
    with pytest.raises(ValueError, match="min_lr"):
        cosine_lr(0, 10, 0.1, min_lr=0.5)
