"""Content-adaptive and sparse scans (ssm_ref.vision.adaptive).

Orders: every adaptive order is a permutation, sorted by score, stable on ties;
a sparse order holds exactly the k highest scores, in the requested order.
Saliency against explicit loops.  The model: gradients against finite
differences (the learned score included), skipped tokens have no influence,
a fixed full order is independent of the score.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, numerical_gradient

from ssm_ref.optim import softmax_cross_entropy
from ssm_ref.vision import (
    AdaptiveVimConfig,
    TinyAdaptiveVim,
    gather_tokens,
    patch_saliency,
    saliency_order,
    scan_order,
    scatter_tokens,
    sparse_order,
)


def test_saliency_order_is_a_descending_stable_permutation(rng):
    s = rng.integers(0, 4, (20, 16)).astype(float)  # many ties
    idx = saliency_order(s)
    assert idx.shape == (20, 16) and idx.dtype == np.int64
    for b in range(20):
        assert np.array_equal(np.sort(idx[b]), np.arange(16))  # a permutation
        ordered = s[b, idx[b]]
        assert np.all(np.diff(ordered) <= 0)  # non-increasing scores
        for v in np.unique(ordered):  # ties keep their raster order
            tied = idx[b][ordered == v]
            assert np.all(np.diff(tied) > 0)
    assert np.array_equal(saliency_order(np.zeros((2, 5))), np.tile(np.arange(5), (2, 1)))
    assert np.array_equal(saliency_order(s.reshape(20, 4, 4)), idx)  # (B, h, w) accepted


@pytest.mark.parametrize("k", [1, 5, 16])
def test_sparse_order_keeps_exactly_the_k_highest(rng, k):
    s = rng.standard_normal((30, 16))  # distinct scores
    base = scan_order("snake", 4, 4)
    for b_arg in (None, base, "score"):
        idx = sparse_order(s, k, base=b_arg)
        assert idx.shape == (30, k)
        for b in range(30):
            want = set(np.argsort(s[b])[::-1][:k].tolist())
            assert set(idx[b].tolist()) == want
            assert min(s[b, idx[b]]) >= np.sort(s[b])[::-1][k - 1]
            if b_arg is None:
                assert np.all(np.diff(idx[b]) > 0)  # raster order among the kept
            elif isinstance(b_arg, str):
                assert np.all(np.diff(s[b, idx[b]]) < 0)
            else:
                pos = [int(np.flatnonzero(base == i)[0]) for i in idx[b]]
                assert np.all(np.diff(pos) > 0)  # the base order among the kept


def test_sparse_order_ties_and_exact_case():
    s = np.array([[0.5, 0.5, 0.9, 0.5, 0.1, 0.2]])
    assert sparse_order(s, 3).tolist() == [[0, 1, 2]]  # 0.9, then the first two 0.5s
    assert sparse_order(s, 3, "score").tolist() == [[2, 0, 1]]
    assert sparse_order(s, 3, base=[5, 4, 3, 2, 1, 0]).tolist() == [[2, 1, 0]]


def test_bad_orders():
    s = np.zeros((2, 6))
    with pytest.raises(ValueError, match="keep = 7 exceeds"):
        sparse_order(s, 7)
    with pytest.raises(ValueError, match="keep"):
        sparse_order(s, 0)
    with pytest.raises(ValueError, match="permutation"):
        sparse_order(s, 2, base=[0, 1, 2, 3, 4, 4])
    with pytest.raises(ValueError, match="permutation"):
        sparse_order(s, 2, base="raster")
    with pytest.raises(ValueError, match=r"score has shape \(6,\)"):
        saliency_order(np.zeros(6))
    with pytest.raises(ValueError, match="score"):
        saliency_order(np.array([[0.0, np.nan]]))


def test_patch_saliency_against_loops(rng):
    x = rng.uniform(0, 1, (2, 6, 4, 2))
    p = 2
    con, grad = patch_saliency(x, p, "contrast"), patch_saliency(x, p, "gradient")
    assert con.shape == grad.shape == (2, 3, 2)
    for b in range(2):
        for i in range(3):
            for j in range(2):
                patch = x[b, i * p:(i + 1) * p, j * p:(j + 1) * p]
                assert np.isclose(con[b, i, j], patch.std())
                total = 0.0
                for a in range(i * p, (i + 1) * p):
                    for c in range(j * p, (j + 1) * p):
                        if a + 1 < 6:
                            total += np.abs(x[b, a + 1, c] - x[b, a, c]).sum()
                        if c + 1 < 4:
                            total += np.abs(x[b, a, c + 1] - x[b, a, c]).sum()
                assert np.isclose(grad[b, i, j], total / (p * p * 2))
    with pytest.raises(ValueError, match="multiples of patch_size"):
        patch_saliency(x, 4)
    with pytest.raises(ValueError, match="kind"):
        patch_saliency(x, 2, "entropy")


def test_gather_scatter_are_adjoint(rng):
    t = rng.standard_normal((3, 10, 4))
    idx = np.stack([rng.permutation(10)[:6] for _ in range(3)])
    yv = rng.standard_normal((3, 6, 4))
    assert np.isclose(np.sum(gather_tokens(t, idx) * yv), np.sum(t * scatter_tokens(yv, idx, 10)))
    assert np.array_equal(gather_tokens(t, idx)[1, 2], t[1, idx[1, 2]])


# --------------------------------------------------------------------------- the model
def model(**kw):
    return TinyAdaptiveVim(embed_dim=8, d_state=4, depth=1, seed=2, **kw)


def loss_and_grads(m, x, y):
    logits, cache = m.forward(x, return_cache=True)
    loss, dlogits = softmax_cross_entropy(logits, y)
    dx, grads = m.backward(dlogits, cache, return_input_grad=True)
    return loss, dx, grads


@pytest.mark.parametrize("kw", [dict(order="score", score="contrast", keep=10),
                                dict(order="fixed", score="learned", keep=7),
                                dict(order="score", score="learned")])
def test_model_gradients_match_finite_differences(rng, kw):
    m = model(**kw)
    if "score.weight" in m.params:  # away from the all-tied start
        m.params["score.weight"] = rng.standard_normal(8)
    x = rng.uniform(0, 1, (2, 8, 8, 1))
    y = np.array([3, 8])
    _, dx, grads = loss_and_grads(m, x, y)
    assert set(grads) == set(m.params)
    f = lambda _=None: softmax_cross_entropy(m.forward(x), y)[0]  # noqa: E731
    names = ["pos_embed", "cls_token", "layers.0.mixer.x_proj.weight", "patch_embed.proj.weight"]
    names += [k for k in ("score.weight", "score.bias") if k in m.params]
    for name in names:
        p = m.params[name]
        ids = rng.choice(p.size, size=min(6, p.size), replace=False)
        assert_close(grads[name].reshape(-1)[ids], numerical_gradient(f, p, indices=ids),
                     kind="fd", err_msg=name)
    if kw["score"] == "learned":  # the learned score is smooth in x as long as the order holds
        ids = rng.choice(x.size, size=6, replace=False)
        assert_close(dx.reshape(-1)[ids], numerical_gradient(f, x, indices=ids), kind="fd")
        assert np.abs(grads["score.weight"]).max() > 0  # the gate makes the score learn


def test_learned_score_starts_as_the_raster_scan(rng):
    m = model(order="score", score="learned")
    x = rng.uniform(0, 1, (3, 8, 8, 1))
    assert np.array_equal(m.scan_indices(x), np.tile(np.arange(16), (3, 1)))


def test_skipped_patches_do_not_reach_the_output(rng):
    """A sparse scan: changing a patch that is not kept (keeping its contrast) changes nothing."""
    m = model(order="fixed", score="contrast", keep=4)
    x = rng.uniform(0, 0.1, (1, 8, 8, 1))
    x[0, :2, :2, 0] = [[0.0, 1.0], [1.0, 0.0]]  # a high-contrast patch at cell 0: kept
    idx = m.scan_indices(x)[0]
    assert 0 in idx and idx.size == 4
    skipped = next(cell for cell in range(16) if cell not in idx)
    i, j = divmod(skipped, 4)
    x2 = x.copy()
    x2[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2] += 0.5  # same std: still not kept
    assert np.array_equal(m.scan_indices(x2)[0], idx)
    assert_close(m(x2), m(x))
    x3 = x.copy()
    x3[0, 0, 0] += 0.05  # a kept patch changes the output
    assert not np.allclose(m(x3), m(x))


def test_fixed_full_order_ignores_the_content(rng):
    m = model(scan="snake")
    x = rng.uniform(0, 1, (2, 8, 8, 1))
    assert np.array_equal(m.scan_indices(x), np.tile(scan_order("snake", 4, 4), (2, 1)))
    m2 = model(order="score")
    idx = m2.scan_indices(x)
    assert np.array_equal(idx, saliency_order(patch_saliency(x, 2)))


def test_config_errors():
    with pytest.raises(ValueError, match="order"):
        AdaptiveVimConfig(order="random")
    with pytest.raises(ValueError, match="score"):
        AdaptiveVimConfig(score="entropy")
    with pytest.raises(ValueError, match="keep = 17 exceeds"):
        AdaptiveVimConfig(keep=17)
    assert AdaptiveVimConfig(keep=5).n_scanned == 5 and AdaptiveVimConfig().n_scanned == 16
