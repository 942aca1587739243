"""MambaLM against an outside oracle: a tiny MambaForCausalLM written by transformers in its own
format (tests/data/mamba_lm, made by tests/data/make_mamba_lm_oracle.py), its logits and its
greedy continuation; step decoding against the full forward; checkpoint errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close

from ssm_ref.lm import MambaLM, MambaLMConfig

DATA = Path(__file__).resolve().parent / "data" / "mamba_lm"
ORACLE = np.load(DATA / "oracle.npz")


@pytest.mark.parametrize("fmt", ["hf", "official"])
def test_logits_match_transformers(fmt):
    lm = MambaLM.from_pretrained(DATA / fmt)
    logits = lm(ORACLE["input_ids"])
    ref = ORACLE["logits"].astype(np.float64)
    assert logits.shape == ref.shape
    rel = np.abs(logits - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, f"max relative error {rel:.2e}"
    assert np.abs(ref).max() > 0.5  # the oracle is not a trivially small output


@pytest.mark.parametrize("fmt", ["hf", "official"])
def test_greedy_continuation_matches_transformers(fmt):
    lm = MambaLM.from_pretrained(DATA / fmt)
    ids = ORACLE["input_ids"]
    out = lm.generate(ids, max_new_tokens=ORACLE["generated"].shape[1] - ids.shape[1])
    np.testing.assert_array_equal(out, ORACLE["generated"])


def test_both_formats_give_the_same_model():
    a, b = MambaLM.from_pretrained(DATA / "hf"), MambaLM.from_pretrained(DATA / "official")
    assert a.config == b.config and a.n_params() == b.n_params()
    assert list(a.state_dict()) == list(b.state_dict())
    np.testing.assert_array_equal(a(ORACLE["input_ids"]), b(ORACLE["input_ids"]))


def test_step_decoding_equals_full_forward(backend):
    import fast

    def scan(*a, **k):
        return fast.selective_scan(*a, backend=backend, **k)

    def step(*a, **k):
        return fast.selective_state_update(*a, backend=backend, **k)

    lm = MambaLM.from_pretrained(DATA / "hf", scan_fn=scan, state_update_fn=step)
    ids = ORACLE["input_ids"]
    out = lm.generate(ids, max_new_tokens=6)
    logits = lm(out)  # one full forward over prompt + continuation
    np.testing.assert_array_equal(out[:, ids.shape[1]:], np.argmax(logits[:, ids.shape[1] - 1:-1], -1))


def test_sampling_is_seeded_and_top_k_restricts():
    lm = MambaLM.from_pretrained(DATA / "hf")
    ids = ORACLE["input_ids"][:1]
    a = lm.generate(ids, 5, temperature=1.0, seed=3)
    assert np.array_equal(a, lm.generate(ids, 5, temperature=1.0, seed=3))
    first = lm.generate(ids, 1, temperature=5.0, top_k=1, seed=0)  # top-1 sampling is greedy
    assert first[0, -1] == np.argmax(lm(ids)[0, -1])


def test_bad_input_and_bad_checkpoints(tmp_path):
    lm = MambaLM.from_pretrained(DATA / "hf")
    with pytest.raises(TypeError, match="input_ids has dtype float64"):
        lm(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"input_ids holds ids in \[0, 96\]"):
        lm(np.array([[0, 96]]))
    with pytest.raises(ValueError, match=r"input_ids has shape \(3,\)"):
        lm(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="temperature = -1"):
        lm.generate(ORACLE["input_ids"], 2, temperature=-1)
    with pytest.raises(ValueError, match="has no config.json"):
        MambaLM.from_pretrained(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(DATA / "hf", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KeyError, match="backbone.layers.2.norm.weight"):
        MambaLM.from_pretrained(bad)
    sd = MambaLM.from_pretrained(DATA / "hf").state_dict()
    sd["backbone.layers.1.mixer.A_log"] = sd["backbone.layers.1.mixer.A_log"][:, :4]
    with pytest.raises(ValueError, match=r"state_dict\['backbone.layers.1.mixer.A_log'\] has shape"):
        MambaLM.from_state_dict(sd, lm.config)
    with pytest.raises(ValueError, match="neither transformers"):
        MambaLMConfig.from_json({"n_embd": 3})


def test_selection_reproduces_each_layers_scan():
    """The recorded Δ, B, C, u and A of a layer, fed to the reference scan, give back that
    layer's output (before out_proj) — so they are what the model computed."""
    import ssm_ref as sr
    lm = MambaLM.from_pretrained(DATA / "hf")
    ids = ORACLE["input_ids"]
    sel = lm.selection(ids)
    assert len(sel) == lm.config.n_layer
    block = lm.layers[0].mixer
    s = sel[0]
    h = lm.embedding[ids].astype(np.float64)
    normed = sr.rms_norm(h, lm.params["backbone.layers.0.norm.weight"])
    _, cache = block.forward(normed, return_cache=True)
    y = sr.selective_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], D=block.params["D"],
                          z=s["z"])
    assert_close(y, cache["y"], kind="exact")
    assert (s["delta"] > 0).all() and s["delta"].shape == (2, 64, 7)
