"""State dropout in the selective scan and weight normalisation (ssm_ref.regularize).

The masked scan's backward and weight normalisation's backward are checked
against central finite differences; a mask of ones must be the plain scan
(forward and backward); the wrapped classifier must be the plain model at
evaluation and its gradients (through v, g and the masks) must match finite
differences of its own training loss.
"""
from __future__ import annotations

import numpy as np
import pytest
from cases import cotangents, scan_case
from conftest import assert_close, numerical_gradient

from ssm_ref import selective_scan, selective_scan_backward
from ssm_ref.optim import softmax_cross_entropy
from ssm_ref.regularize import (
    RegularizationConfig,
    Regularized,
    StateDropoutScan,
    selective_scan_state_dropout,
    selective_scan_state_dropout_backward,
    state_dropout_mask,
    weight_norm,
    weight_norm_backward,
)
from ssm_ref.vision import build_model

EPS = 1e-6
SIZES = dict(batch=2, dim=4, length=7, dstate=3)


def make_case(rng, form_B="variable", form_C="variable", complex_=False, dlast=True, **optional):
    kw = scan_case(rng, form_B, form_C, complex_, **SIZES, **optional, A_spread=0.5, A_imag=1.0)
    dout, dl = cotangents(rng, kw, dlast)
    return kw, dout, dl


def masked_loss(kw, dout, dlast, mask):
    y, last = selective_scan_state_dropout(**kw, return_last_state=True, mask=mask)
    value = np.sum(dout * y)
    if dlast is not None:
        value += np.sum(np.conj(dlast) * last).real
    return value


CASES = {
    "var-var-all": ("variable", "variable", False, {}),
    "const-group-all": ("constant", "grouped", False, {}),
    "var-var-bare": ("variable", "variable", False,
                     dict(D=False, z=False, delta_bias=False, softplus=False, h0=False,
                          dlast=False)),
    "complex-var-var-all": ("variable", "variable", True, {}),
}


@pytest.mark.parametrize("mask_shape", ["full", "per-step-channel"])
@pytest.mark.parametrize("case", list(CASES))
def test_masked_scan_gradients_match_finite_differences(rng, case, mask_shape):
    form_B, form_C, complex_, opts = CASES[case]
    kw, dout, dlast = make_case(rng, form_B, form_C, complex_, **opts)
    b, d, L, n = SIZES["batch"], SIZES["dim"], SIZES["length"], SIZES["dstate"]
    shape = (b, d, L, n) if mask_shape == "full" else (1, d, L, 1)
    mask = state_dropout_mask(shape, 0.4, rng)
    assert 0 < np.count_nonzero(mask) < mask.size  # some entries dropped, some kept
    grads = selective_scan_state_dropout_backward(dout, **kw, dlast_state=dlast, mask=mask)
    assert set(grads) == {"u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"}
    for name, grad in grads.items():
        if name not in kw:
            assert grad is None, name
            continue
        x = np.array(kw[name])
        fd = numerical_gradient(lambda v: masked_loss(dict(kw, **{name: v}), dout, dlast, mask),
                                x, eps=EPS)
        assert grad.shape == x.shape and grad.dtype == x.dtype, name
        assert_close(grad, fd, kind="fd", err_msg=f"{case}, {mask_shape}: d{name}")


@pytest.mark.parametrize("complex_", [False, True])
def test_mask_of_ones_is_the_plain_scan_forward_and_backward(rng, complex_):
    kw, dout, dlast = make_case(rng, "variable", "grouped", complex_)
    ones = np.ones((SIZES["batch"], SIZES["dim"], SIZES["length"], SIZES["dstate"]))
    for mask in (None, ones):
        y, h = selective_scan_state_dropout(**kw, return_last_state=True, mask=mask)
        y0, h0 = selective_scan(**kw, return_last_state=True)
        assert_close(y, y0)
        assert_close(h, h0)
        g = selective_scan_state_dropout_backward(dout, **kw, dlast_state=dlast, mask=mask)
        g0 = selective_scan_backward(dout, **kw, dlast_state=dlast)
        for k in g0:
            if g0[k] is None:
                assert g[k] is None
            else:
                assert_close(g[k], g0[k], err_msg=k)


def test_dropped_entry_forgets_its_past(rng):
    """h_t = m_t s_t: a zero at step t makes the state after t independent of the input before t."""
    kw, _, _ = make_case(rng, D=False, z=False, h0=False)
    mask = np.ones((SIZES["batch"], SIZES["dim"], SIZES["length"], SIZES["dstate"]))
    mask[:, :, 3] = 0.0  # every entry dropped at step 3
    y = selective_scan_state_dropout(**kw, mask=mask)
    u2 = np.array(kw["u"])
    u2[:, :, :3] += 10.0  # change only the input before step 3
    y2 = selective_scan_state_dropout(**dict(kw, u=u2), mask=mask)
    assert np.array_equal(y[:, :, 3], np.zeros_like(y[:, :, 3]))
    assert_close(y2[:, :, 4:], y[:, :, 4:])
    assert not np.allclose(y2[:, :, :3], y[:, :, :3])


def test_inverted_dropout_keeps_the_expected_state(rng):
    """E[h_t] over the masks is the undropped state (the mean of many masked scans)."""
    kw, _, _ = make_case(rng, D=False, z=False)
    _, h_plain = selective_scan(**kw, return_last_state=True)
    draws = [selective_scan_state_dropout(**kw, return_last_state=True,
                                          mask=state_dropout_mask((2, 4, 7, 3), 0.2, k))[1]
             for k in range(4000)]
    mean = np.mean(draws, axis=0)
    err = np.abs(mean - h_plain).max() / np.abs(h_plain).max()
    assert err < 0.03, err


def test_mask_draws():
    m = state_dropout_mask((50, 40, 30, 2), 0.25, 1)
    assert set(np.unique(m)) == {0.0, 1.0 / 0.75}
    assert abs(np.mean(m == 0) - 0.25) < 0.01
    assert np.array_equal(m, state_dropout_mask((50, 40, 30, 2), 0.25, 1))
    assert np.all(state_dropout_mask((3, 3), 0.0, 0) == 1.0)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, True, "0.1"])
def test_bad_probability(p):
    with pytest.raises(ValueError, match="Parameter p"):
        state_dropout_mask((2, 2), p, 0)
    with pytest.raises(ValueError, match="Parameter p"):
        StateDropoutScan(p)


def test_bad_mask(rng):
    kw, _, _ = make_case(rng)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4, 6, 3\)"):
        selective_scan_state_dropout(**kw, mask=np.ones((2, 4, 6, 3)))
    with pytest.raises(ValueError, match="mask has shape"):
        selective_scan_state_dropout(**kw, mask=np.ones((2, 4, 7)))
    with pytest.raises(ValueError, match="negative"):
        selective_scan_state_dropout(**kw, mask=-np.ones((2, 4, 7, 3)))
    bad = np.ones((2, 4, 7, 3))
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="mask"):
        selective_scan_state_dropout_backward(np.ones((2, 4, 7)), **kw, mask=bad)


# --------------------------------------------------------------------------- the backend object
def test_state_dropout_scan_pairs_forward_and_backward_masks(rng):
    kw, dout, _ = make_case(rng, h0=False)
    sd = StateDropoutScan(0.3, seed=5)
    y1 = sd.scan(**kw)
    kw2 = dict(kw, delta=np.array(kw["delta"]) * 1.1)  # a second call, another delta array
    y2 = sd.scan(**kw2)
    g2 = sd.scan_backward(dout, **kw2)  # out of order: matched by the delta array
    g1 = sd.scan_backward(dout, **kw)
    replay = StateDropoutScan(0.3, seed=5)  # same stream: the same two masks
    m1 = state_dropout_mask((2, 4, 7, 3), 0.3, replay.rng)
    m2 = state_dropout_mask((2, 4, 7, 3), 0.3, replay.rng)
    assert_close(y1, selective_scan_state_dropout(**kw, mask=m1))
    assert_close(y2, selective_scan_state_dropout(**kw2, mask=m2))
    assert_close(g1["B"], selective_scan_state_dropout_backward(dout, **kw, mask=m1)["B"])
    assert_close(g2["A"], selective_scan_state_dropout_backward(dout, **kw2, mask=m2)["A"])
    with pytest.raises(RuntimeError, match="no mask"):
        sd.scan_backward(dout, **kw)  # its mask was used up
    sd.training = False
    assert_close(sd.scan(**kw), selective_scan(**kw))


# --------------------------------------------------------------------------- weight normalisation
@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3)])
def test_weight_norm_backward_matches_finite_differences(rng, shape):
    v = rng.standard_normal(shape)
    g = rng.uniform(0.5, 2.0, shape[:-1])
    dW = rng.standard_normal(shape)
    W = weight_norm(v, g)
    assert_close(np.sqrt(np.sum(W ** 2, axis=-1)), g)  # rows (last axis) of length g
    dv, dg = weight_norm_backward(dW, v, g)
    f = lambda: np.sum(dW * weight_norm(v, g))  # noqa: E731
    assert_close(dv, numerical_gradient(lambda _: f(), v), kind="fd")
    assert_close(dg, numerical_gradient(lambda _: f(), g), kind="fd")
    # dv is orthogonal to v, row by row: the length is left to g
    assert np.abs(np.sum(dv * v, axis=-1)).max() < 1e-12


def test_weight_norm_bad_input():
    with pytest.raises(ValueError, match=r"Parameter g has shape \(3,\)"):
        weight_norm(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="zero rows"):
        weight_norm(np.array([[1.0, 2.0], [0.0, 0.0]]), np.ones(2))
    with pytest.raises(ValueError, match=r"dW has shape"):
        weight_norm_backward(np.ones((3, 2)), np.ones((2, 3)), np.ones(2))


# --------------------------------------------------------------------------- the wrapped model
def tiny(name="vim", **kw):
    return build_model(name, embed_dim=8, d_state=4, depth=1, seed=3, **kw)


@pytest.mark.parametrize("name", ["vim", "vmamba"])
def test_regularized_is_the_plain_model_at_evaluation(rng, name):
    x = rng.uniform(0, 1, (3, 8, 8, 1))
    plain = tiny(name)
    reg = Regularized(tiny(name), state_dropout=0.5, weight_norm="state")
    assert_close(reg(x), plain(x))  # W = g v / ||v|| starts equal to W
    assert len(reg.params) == len(plain.params) + len(reg.normed)
    logits_train, _ = reg.forward(x, return_cache=True)  # dropout on: differs
    assert not np.allclose(logits_train, plain(x))
    reg.eval()
    assert_close(reg.forward(x, return_cache=True)[0], plain(x))


def test_regularized_gradients_match_finite_differences(rng):
    """The training loss (a fixed draw of the masks) against finite differences of v, g, others."""
    x = rng.uniform(0, 1, (2, 8, 8, 1))
    y = np.array([1, 7])
    reg = Regularized(tiny(), state_dropout=0.3, weight_norm="state", seed=11)
    # perturb g and v away from the start so that the check is not at a special point
    for k in reg.normed:
        reg.params[k + "_g"] *= rng.uniform(0.8, 1.2, reg.params[k + "_g"].shape)
    state = reg.dropout.rng.bit_generator.state

    def loss(_=None):
        reg.dropout.rng.bit_generator.state = state  # the same masks every evaluation
        logits, cache = reg.forward(x, return_cache=True)
        reg.dropout.clear()
        return softmax_cross_entropy(logits, y)[0]

    reg.dropout.rng.bit_generator.state = state
    logits, cache = reg.forward(x, return_cache=True)
    grads = reg.backward(softmax_cross_entropy(logits, y)[1], cache)
    assert set(grads) == set(reg.params)
    for name in ["layers.0.mixer.x_proj.weight_v", "layers.0.mixer.x_proj.weight_g",
                 "layers.0.mixer.dt_proj_b.weight_g", "layers.0.mixer.A_log",
                 "layers.0.mixer.in_proj.weight"]:
        p = reg.params[name]
        idx = rng.choice(p.size, size=min(6, p.size), replace=False)
        fd = numerical_gradient(loss, p, indices=idx)
        assert_close(grads[name].reshape(-1)[idx], fd, kind="fd", err_msg=name)


def test_regularized_trains_and_updates_v_g(rng):
    from ssm_ref.train import train
    ds = (rng.uniform(0, 1, (32, 8, 8, 1)), rng.integers(0, 10, 32),
          rng.uniform(0, 1, (16, 8, 8, 1)), rng.integers(0, 10, 16))
    reg = Regularized(tiny(), RegularizationConfig(state_dropout=0.1, weight_norm="state"))
    before = reg.state_dict()
    m = train(reg, ds, epochs=1, batch_size=16, progress=False, plot=False)
    after = reg.state_dict()
    assert set(before) == set(after) and m["n_params"] == reg.n_params()
    assert not np.allclose(before["layers.0.mixer.x_proj.weight_v"],
                           after["layers.0.mixer.x_proj.weight_v"])
    # the wrapped model computes with W = g v / ||v|| of the trained v, g
    reg(ds[2])
    w = weight_norm(after["layers.0.mixer.x_proj.weight_v"],
                    after["layers.0.mixer.x_proj.weight_g"])
    assert_close(reg.model.params["layers.0.mixer.x_proj.weight"], w)
    assert "layers.0.mixer.x_proj.weight_g" in reg.no_weight_decay()
    assert "layers.0.mixer.x_proj.weight_v" not in reg.no_weight_decay()


def test_regularization_config_errors():
    with pytest.raises(ValueError, match="weight_norm"):
        RegularizationConfig(weight_norm="x_proj.weight")
    with pytest.raises(ValueError, match="Parameter p"):
        RegularizationConfig(state_dropout=1.0)
    with pytest.raises(ValueError, match="no parameter ending"):
        Regularized(tiny(), weight_norm=("nonexistent.weight",))
    with pytest.raises(ValueError, match="no parameter ending"):
        Regularized(build_model("cnn", embed_dim=8, depth=1), weight_norm="state")
    with pytest.raises(TypeError, match="not a tiny classifier"):
        Regularized(object())
