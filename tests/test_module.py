"""Tests of ssm_ref.module: the one Module base of every block and model.

State-dict names are the submodules' under their prefixes; load_state_dict
refuses missing, extra and misshaped keys by name; params is a live view;
set_backend reaches every submodule; to(xp) moves every parameter.
"""
from __future__ import annotations

import numpy as np
import pytest

from ssm_ref import MambaBlock, MambaConfig, selective_scan, selective_scan_backward
from ssm_ref.module import Module
from ssm_ref.vision import SS2D, PlainMambaMixer, VimBlock, VimMixer, build_model


def recording(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(fn.__name__)
        return fn(*args, **kwargs)
    return wrapped


def test_state_dict_is_the_submodules_under_their_prefixes():
    model = build_model("vim", embed_dim=8, d_state=4, depth=2)
    blk = model.layers[1]
    sd = model.state_dict()
    for k, v in blk.state_dict().items():
        np.testing.assert_array_equal(sd["layers.1." + k], v)
    assert "layers.1.mixer.A_b_log" in sd and "layers.0.norm.weight" in sd
    assert list(sd) == list(model.params)
    assert model.n_params() == sum(v.size for v in sd.values())


def test_params_view_reaches_the_array_the_block_computes_with(rng):
    model = build_model("vmamba", embed_dim=8, d_state=4, depth=1)
    x = rng.standard_normal((2, 8, 8, 1))
    before = model(x)
    key = "layers.0.self_attention.out_proj.weight"
    assert model.params[key] is model.layers[0].self_attention.params["out_proj.weight"]
    model.params[key] = 2.0 * model.params[key]  # assignment through the model ...
    after = model(x)
    assert not np.allclose(before, after)  # ... is what the block computes with
    with pytest.raises(ValueError, match=r"params\['layers.0.self_attention.out_proj.weight'\]"):
        model.params[key] = np.zeros((3, 3))
    with pytest.raises(KeyError, match="no parameter 'nope'"):
        model.params["nope"]
    with pytest.raises(TypeError):
        del model.params[key]


def test_params_items_and_values_walk_the_tree_in_state_dict_order():
    """items() and values() (one walk of the tree, not a lookup per name) give what the
    mapping gives name by name: the same arrays, in the same order, and act as views."""
    model = build_model("vim", embed_dim=8, d_state=4, depth=2)
    view = model.params
    keys = list(view)
    assert [k for k, _ in view.items()] == keys
    assert all(a is view[k] for k, a in view.items())
    assert all(a is view[k] for k, a in zip(keys, view.values()))
    assert len(view.items()) == len(view.values()) == len(keys)
    key = keys[3]
    assert (key, view[key]) in view.items() and any(v is view[key] for v in view.values())
    view[key] = np.zeros_like(view[key])  # a new array: the next walk sees it
    assert dict(view.items())[key] is view[key]


def test_load_state_dict_refuses_missing_extra_and_misshaped_keys_by_name():
    block = VimBlock(d_model=4, d_state=2)
    sd = block.state_dict()
    with pytest.raises(KeyError, match=r"missing \['mixer.D_b'\]"):
        block.load_state_dict({k: v for k, v in sd.items() if k != "mixer.D_b"})
    with pytest.raises(KeyError, match=r"unexpected \['extra'\]"):
        block.load_state_dict({**sd, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"state_dict\['norm.weight'\] has shape \(5,\)"):
        block.load_state_dict({**sd, "norm.weight": np.zeros(5)})
    with pytest.raises(ValueError, match="non-finite"):
        block.load_state_dict({**sd, "norm.weight": np.full(4, np.nan)})
    other = VimBlock(d_model=4, d_state=2, seed=7)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_set_backend_reaches_every_submodule(rng):
    calls = []
    model = build_model("plainmamba", embed_dim=8, d_state=4, depth=2)
    model.set_backend(recording(selective_scan, calls),
                      recording(selective_scan_backward, calls))
    scan_modules = [m for m in model.modules() if isinstance(m, PlainMambaMixer)]
    assert len(scan_modules) == 2
    assert all(m.scan_fn is model.scan_fn for m in model.modules())
    logits, cache = model.forward(rng.standard_normal((1, 8, 8, 1)), return_cache=True)
    model.backward(np.ones_like(logits), cache)
    assert calls.count("selective_scan") == 2 and calls.count("selective_scan_backward") == 2
    model.set_backend()  # None: back to the reference everywhere
    assert all(m.scan_fn is selective_scan for m in model.modules())
    with pytest.raises(TypeError, match="scan_fn"):
        model.set_backend(scan_fn=3)


def test_config_is_passed_whole_or_built_from_fields():
    cfg = MambaConfig(d_model=8, d_state=4, expand=1)
    for cls in (VimMixer, SS2D, PlainMambaMixer, MambaBlock):
        assert cls(cfg).config.d_inner == 8
        assert cls(cfg, d_state=2).config.d_state == 2  # fields update a given config
    assert SS2D(d_model=8).config.d_conv == 3  # a family's own default
    assert PlainMambaMixer(d_model=8).config.d_conv == 7
    with pytest.raises(TypeError, match="config is a int but a MambaConfig was expected"):
        VimMixer(8)


def test_to_moves_every_parameter_of_the_tree(fake_xp):
    model = build_model("vim", embed_dim=8, d_state=4, depth=1).to(fake_xp)
    from ssm_ref._xp import array_module
    assert all(array_module(v) is fake_xp for v in model.params.values())
    with pytest.raises(TypeError, match="array module"):
        model.to("numpy")


def test_duplicate_names_are_refused():
    m = Module()
    m.add_param("w", np.zeros(2))
    with pytest.raises(ValueError, match="'w' is already registered"):
        m.add_param("w", np.zeros(2))
    with pytest.raises(TypeError, match="not a Module"):
        m.add_module("sub", object())
