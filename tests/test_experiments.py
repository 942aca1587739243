"""Tests of the experiment scripts in experiments/: each ``--quick`` run works end to end and writes
well-formed results; the pieces they measure with are checked against independent oracles.

The scripts are files, not a package: they are loaded by path.  Each quick run happens once per
module (a fixture) and several tests read its JSON.  The quick runs of ``architectures`` and
``robustness`` take about 10 s each and are marked slow.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
COMMON_KEYS = {"experiment", "command", "quick", "settings", "machine", "results", "runs",
               "wall_time_s", "figure", "created"}


def load(name):
    """Import experiments/<name>.py under the module name ``experiments_<name>``."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    key = f"experiments_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def quick_run(name, tmp_path_factory, extra=()):
    out = tmp_path_factory.mktemp(name)
    payload = load(name).main(["--quick", "--out", str(out), *extra])
    path = out / f"{name}.json"
    with open(path) as fh:
        on_disk = json.load(fh)
    return payload, on_disk, out


def check_common(on_disk, out, name):
    assert COMMON_KEYS <= set(on_disk), f"missing keys {COMMON_KEYS - set(on_disk)}"
    assert on_disk["experiment"] == name
    assert on_disk["quick"] is True
    assert on_disk["command"] == f"python experiments/{name}.py --quick"
    assert on_disk["machine"]["backend"] in ("ref", "numba")
    png = out / on_disk["figure"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_stat(stat, n):
    assert set(stat) == {"mean", "std", "n", "values"}
    assert stat["n"] == n == len(stat["values"])
    assert_close(stat["mean"], np.mean(stat["values"]), kind="exact")


# --------------------------------------------------------------------------- shared helpers
def test_mean_std_against_numpy():
    C = load("scan_orders").C
    vals = [0.5, 0.75, 1.0]
    s = C.mean_std(vals)
    assert_close(s["mean"], 0.75, kind="exact")
    assert_close(s["std"], np.sqrt(((-0.25) ** 2 + 0 + 0.25 ** 2) / 2), kind="exact")  # ddof=1
    assert C.mean_std([0.3])["std"] == 0.0
    assert C.fmt(s) == "0.750 ± 0.250"


def test_matched_width_is_closest():
    from ssm_ref.vision.models import build_model
    C = load("scan_orders").C
    E, n = C.matched_width("attention", 10000, 2, 8)
    assert build_model("attention", embed_dim=E).n_params() == n
    for other in (E - 2, E + 2):  # the neighbours are no closer
        assert abs(build_model("attention", embed_dim=other).n_params() - 10000) >= abs(n - 10000)


def test_bad_options_fail():
    with pytest.raises(SystemExit):
        load("scan_orders").main(["--seeds", "0", "--quick"])
    with pytest.raises(SystemExit):
        load("scan_orders").main(["--backend", "nope"])


# --------------------------------------------------------------------------- scan orders
@pytest.fixture(scope="module")
def scan_orders_run(tmp_path_factory):
    return quick_run("scan_orders", tmp_path_factory)


def test_scan_orders_quick(scan_orders_run):
    payload, on_disk, out = scan_orders_run
    check_common(on_disk, out, "scan_orders")
    labels = [c[0] for c in load("scan_orders").CONFIGS]
    for task in ("pair", "digits"):
        assert list(on_disk["results"][task]) == labels
        for lab in labels:
            stat = on_disk["results"][task][lab]["test_accuracy"]
            check_stat(stat, 1)
            assert 0.0 <= stat["mean"] <= 1.0
    assert len(on_disk["runs"]) == 2 * len(labels)
    assert "| scan order" in on_disk["table"]


def test_mark_distance_by_hand():
    """Pair task, 12x12 pixels, 3x3 patches, 4x4 tokens, marks on rows r..r+2 (r = 0..9).

    Raster: pos(i, 0) = 4i, pos(j, 3) = 4j + 3.  For r = 0, 3, 6, 9 the marks cover one
    token row (distance 3); otherwise two rows k, k+1 and the closest pair is
    (k, 3) -> (k+1, 0): distance 1.  Mean (4·3 + 6·1) / 10 = 1.8.  Column order:
    pos(i, 0) = i, pos(j, 3) = 12 + j: the closest pair is 12 + k - (k+1) = 11 for two
    rows, 12 for one: mean (4·12 + 6·11) / 10 = 11.4.
    """
    from ssm_ref.vision import scan_order
    so = load("scan_orders")
    raster = scan_order("raster", 4, 4)
    column = scan_order("column", 4, 4)
    assert_close(so.mark_distance([raster], 12, 3), 1.8, kind="exact")
    assert_close(so.mark_distance([raster, raster[::-1]], 12, 3), 1.8, kind="exact")
    assert_close(so.mark_distance([column], 12, 3), 11.4, kind="exact")
    # several scans: the closest one counts, whatever its place in the list
    assert_close(so.mark_distance([column, raster], 12, 3), 1.8, kind="exact")
    assert_close(so.mark_distance([raster, column], 12, 3), 1.8, kind="exact")


# --------------------------------------------------------------------------- receptive fields
@pytest.fixture(scope="module")
def receptive_run(tmp_path_factory):
    return quick_run("receptive_fields", tmp_path_factory)


def test_receptive_fields_quick(receptive_run):
    payload, on_disk, out = receptive_run
    check_common(on_disk, out, "receptive_fields")
    assert list(on_disk["results"]) == load("receptive_fields").QUICK["configs"]
    for lab, r in on_disk["results"].items():
        for key in ("erf_nonlocal_init", "erf_nonlocal_trained"):
            check_stat(r[key], 1)
            assert 0.0 <= r[key]["mean"] < 1.0
        maps = r["maps_seed0"]
        assert np.asarray(maps["erf_trained"]).shape == (8, 8)
        assert np.asarray(maps["map_trained"]).shape == (4, 4)
        assert_close(np.max(maps["erf_trained"]), 1.0, kind="exact")  # normalised by the max
        assert np.all(np.asarray(maps["map_trained"]) >= 0)


def test_receptive_field_summaries_by_hand():
    rf = load("receptive_fields")
    erf = np.zeros((8, 8))
    erf[4:6, 4:6] = 1.0  # only the centre token's own 2x2 patch
    assert rf.nonlocal_share(erf, (2, 2), 2) == 0.0
    erf[0, 0] = 4.0  # as much mass far away as in the patch
    assert_close(rf.nonlocal_share(erf, (2, 2), 2), 0.5, kind="exact")
    amap = np.zeros((4, 4))
    amap[2, 2] = 1.0
    assert rf.attention_distance(amap, (2, 2)) == 0.0
    amap[2, 2], amap[2, 0], amap[0, 2] = 0.0, 1.0, 1.0  # two cells at distance 2
    assert_close(rf.attention_distance(amap, (2, 2)), 2.0, kind="exact")


def test_vim_attention_map_is_causal_in_each_direction():
    """Forward path alone: cells after the query in the scan get no weight (oracle: the order)."""
    from ssm_ref.vision.models import build_model
    rf = load("receptive_fields")
    model = build_model("vim", embed_dim=8, d_state=4, depth=1, seed=0, scan="raster")
    x = np.random.default_rng(0).random((2, 8, 8, 1))
    full = rf.vim_attention_map(model, x, (2, 2))
    assert full.shape == (4, 4) and np.all(full > 0)  # both directions: every cell is seen
    # switch the backward path off by giving it zero C: only cells up to the query remain
    model.params["layers.0.mixer.x_proj_b.weight"][-4:] = 0.0
    fwd = rf.vim_attention_map(model, x, (2, 2)).ravel()
    assert np.all(fwd[:11] > 0) and np.all(fwd[11:] == 0)


# --------------------------------------------------------------------------- architectures
@pytest.fixture(scope="module")
def architectures_run(tmp_path_factory):
    return quick_run("architectures", tmp_path_factory)


@pytest.mark.slow
def test_architectures_quick(architectures_run):
    payload, on_disk, out = architectures_run
    check_common(on_disk, out, "architectures")
    acc, scal = on_disk["results"]["accuracy"], on_disk["results"]["scaling"]
    target = on_disk["settings"]["params"]
    for name in ("vim", "vmamba", "attention", "cnn"):
        assert abs(acc[name]["n_params"] - target) <= 0.15 * target
        check_stat(acc[name]["test_accuracy"], 1)
        assert acc[name]["step_time_s"]["mean"] > 0
        sizes = [p["size"] for p in scal[name]["points"]]
        assert sizes == on_disk["settings"]["sizes"]
    # above chance (10%) after the quick training
    assert acc["vim"]["test_accuracy"]["mean"] > 0.2
    # the L x L score matrix: attention's memory grows faster with L than Vim's
    assert scal["attention"]["memory_exponent"] > scal["vim"]["memory_exponent"] + 0.2


def test_fit_exponent_recovers_powers():
    arch = load("architectures")
    L = np.array([16.0, 64.0, 256.0])
    assert_close(arch.fit_exponent(L, 3.0 * L), 1.0, kind="exact")
    assert_close(arch.fit_exponent(L, 0.5 * L ** 2), 2.0, kind="exact")


# --------------------------------------------------------------------------- robustness
class LinearModel:
    """logits = flatten(x) @ W: the input gradient of the cross-entropy is known in closed form."""

    def __init__(self, W):
        self.W = W
        self.config = type("Cfg", (), {"depth": 1})()

    def forward(self, x, return_cache=False):
        logits = x.reshape(len(x), -1) @ self.W
        return (logits, x) if return_cache else logits

    def backward(self, dlogits, cache, return_input_grad=False):
        dx = (dlogits @ self.W.T).reshape(cache.shape)
        return (dx, {}) if return_input_grad else {}


def test_fgsm_and_pgd_on_a_linear_model():
    rob = load("robustness")
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 3))
    x = rng.uniform(0.3, 0.7, (5, 2, 2, 1))
    y = np.array([0, 1, 2, 0, 1])
    logits = x.reshape(5, -1) @ W
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(5), y] -= 1.0  # d(mean CE)/dlogits, times the batch size
    grad = (p @ W.T).reshape(x.shape)  # the oracle, up to the positive factor 1/5
    model = LinearModel(W)
    eps = 0.1
    assert_close(rob.fgsm(model, x, y, eps), x + eps * np.sign(grad), kind="exact")
    xa = rob.pgd(model, x, y, eps, steps=4)
    assert np.all(np.abs(xa - x) <= eps + 1e-12) and np.all((xa >= 0) & (xa <= 1))
    assert rob.fgsm(model, x, y, 0.0) is not x and np.array_equal(rob.fgsm(model, x, y, 0.0), x)


def test_scan_recorder_changes_nothing_and_matches_every_call():
    from ssm_ref.optim import softmax_cross_entropy
    from ssm_ref.vision.models import build_model
    rob = load("robustness")
    x = np.random.default_rng(1).random((3, 8, 8, 1))
    y = np.array([1, 2, 3])
    for name in ("vim", "vmamba"):
        model = build_model(name, embed_dim=8, d_state=4, depth=2, seed=0)
        logits, cache = model.forward(x, return_cache=True)
        _, dlogits = softmax_cross_entropy(logits, y)
        grads = model.backward(dlogits, cache)
        rec = rob.ScanRecorder(model.scan_fn, model.scan_backward_fn)
        model.set_backend(rec.scan, rec.scan_backward)
        logits2, cache2 = model.forward(x, return_cache=True)
        grads2 = model.backward(dlogits, cache2)
        assert np.array_equal(logits, logits2)
        for k in grads:
            assert np.array_equal(grads[k], grads2[k]), k
        assert len(rec.calls) == (4 if name == "vim" else 2)  # Vim: 2 paths per block
        assert sorted(rec.grads) == list(range(len(rec.calls)))
        for k, call in enumerate(rec.calls):
            assert rec.grads[k]["delta"].shape == call["delta"].shape


@pytest.fixture(scope="module")
def robustness_run(tmp_path_factory):
    return quick_run("robustness", tmp_path_factory)


@pytest.mark.slow
def test_robustness_quick(robustness_run):
    payload, on_disk, out = robustness_run
    check_common(on_disk, out, "robustness")
    res = on_disk["results"]
    eps = res["eps"]
    assert eps[0] == 0.0 and len(eps) >= 2
    for name, r in res["models"].items():
        fg, pg = r["fgsm_accuracy"], r["pgd_accuracy"]
        assert len(fg) == len(pg) == len(eps)
        # eps = 0 is the clean accuracy on the attacked images; an attack never helps here
        assert_close(fg[0]["mean"], pg[0]["mean"], kind="exact")
        for i in range(1, len(eps)):
            assert fg[i]["mean"] <= fg[0]["mean"], (name, eps[i])
            assert pg[i]["mean"] <= pg[0]["mean"], (name, eps[i])
    for name in ("vim", "vmamba"):
        probe = res["models"][name]["probe"]
        for key in ("first_order_share", "saliency_share"):
            assert set(probe[key]) == {"delta", "B", "C"}
            assert_close(sum(v["mean"] for v in probe[key].values()), 1.0, kind="exact")
        assert all(v["mean"] >= 0 for v in probe["saliency_share"].values())
    states = res["models"]["vim"]["state_trained"]
    assert set(states) == {"in distribution (digits)", "constant bright image"}
    assert all(len(v) == len(res["lengths"]) for v in states.values())
    assert res["models"]["vim"]["clean_accuracy"]["mean"] > 0.2  # above chance (10%)
