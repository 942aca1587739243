"""The vision plumbing and blocks run on device arrays: same results, no host round-trips.

Every function of ``ssm_ref.vision.scan_orders`` that touches tokens, every
multi-direction scan and merge of ``ssm_ref.vision.multi``, and every block of
``ssm_ref.vision.patch_embed``, ``.vim``, ``.vmamba`` and ``.plainmamba``
(forward and backward) is run twice: once on NumPy,
once on the strict fake device module (``tests/fake_device.py``, fixture
``fake_xp``) with the inputs and every entry of ``block.params`` moved by
``fake.asarray``.  The device run must return device arrays only (outputs,
gradients and the arrays of the cache), equal to the NumPy run, and a repeated
call must neither read a value on the host nor move one between host and
device: the scan orders stay NumPy index arrays, copied to the device once and
cached.  The only host arrays a cache may hold are those index arrays
(``"perms"``, ``"codes"``).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from fake_device import COUNTS, NO_HOST_TRAFFIC, DeviceArray, fake, on_device, reset_counts

from conftest import assert_close

from ssm_ref.vision import (
    ES2D,
    SCHEMES,
    SS2D,
    LocalSS2D,
    PatchEmbed,
    PlainMambaBlock,
    PlainMambaMixer,
    VimBlock,
    VimMixer,
    VSSBlock,
    add_position_embedding,
    add_position_embedding_backward,
    atrous_subgrids,
    cross_merge,
    cross_scan,
    from_sequence,
    insert_cls_token,
    insert_cls_token_backward,
    multi_merge,
    multi_scan,
    scan_order,
    scan_scheme,
    to_sequence,
)
from ssm_ref import _xp

HOST_INDEX_KEYS = ("perms", "codes")  # cache entries that are NumPy index arrays by design
TINY = dict(d_state=2)  # with d_model 4: d_inner 8, dt_rank 1


# --------------------------------------------------------------------------- helpers
def assert_same_tree(got, expected, where="result"):
    """``got`` mirrors ``expected`` with every array a DeviceArray equal to the NumPy one.

    Entries named in :data:`HOST_INDEX_KEYS` stay NumPy index arrays.
    """
    if isinstance(expected, (np.ndarray, np.generic)):
        assert isinstance(got, DeviceArray), f"{where} is {type(got).__name__}, not on the device"
        assert got.dtype == expected.dtype, f"{where}: dtype {got.dtype} vs {expected.dtype}"
        assert_close(got, expected, kind="exact", err_msg=where)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for k in expected:
            if k in HOST_INDEX_KEYS:
                assert len(got[k]) == len(expected[k]), f"{where}[{k!r}]"
                for a, b in zip(got[k], expected[k]):
                    assert isinstance(a, np.ndarray), f"{where}[{k!r}] should stay on the host"
                    np.testing.assert_array_equal(a, b)
            else:
                assert_same_tree(got[k], expected[k], f"{where}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(got) is type(expected) and len(got) == len(expected), where
        for k, (a, b) in enumerate(zip(got, expected)):
            assert_same_tree(a, b, f"{where}[{k}]")
    else:
        assert got == expected, f"{where}: {got!r} vs {expected!r}"


def check_function(fn, args, kwargs=None, warm=True, host=()):
    """``fn`` on NumPy and on the device: same results, no host traffic (after one warm call).

    The arguments at the positions in ``host`` (scan orders) stay NumPy.
    """
    kwargs = kwargs or {}
    expected = fn(*args, **kwargs)
    dev_args = [a if i in host else on_device(a) for i, a in enumerate(args)]
    if warm:  # the first call may copy index arrays to the device (then cached) ...
        reset_counts()
        fn(*dev_args, **kwargs)
        assert COUNTS["sync"] == 0 and COUNTS["to_host"] == 0, f"{fn.__name__}: {COUNTS}"
    reset_counts()  # ... a repeated call moves nothing
    got = fn(*dev_args, **kwargs)
    assert COUNTS == NO_HOST_TRAFFIC, f"{fn.__name__} touched the host: {COUNTS}"
    assert_same_tree(got, expected, fn.__name__)
    return got


def move_params(block):
    """A copy of ``block`` with every parameter (the sub-block's too) on the device."""
    return copy.deepcopy(block).to(fake)


def perturb(block, rng, scale=0.3):
    """Move every parameter off its initialization so that each path carries signal."""
    for k, v in block.params.items():
        block.params[k] = (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
    return block


def check_block(block, x, rng):
    """Forward (with cache) and backward of ``block`` on NumPy and on the device."""
    out, cache = block.forward(x, return_cache=True)
    dout = rng.standard_normal(out.shape).astype(out.dtype)
    dx, grads = block.backward(dout, cache)
    dev = move_params(block)
    x_d, dout_d = fake.asarray(x), fake.asarray(dout)
    reset_counts()
    warm_out, warm_cache = dev.forward(x_d, return_cache=True)  # warm the index-array cache
    dev.backward(dout_d, warm_cache)
    assert COUNTS["sync"] == 0 and COUNTS["to_host"] == 0, f"first call: {COUNTS}"
    reset_counts()
    out_d, cache_d = dev.forward(x_d, return_cache=True)
    dx_d, grads_d = dev.backward(dout_d, cache_d)
    assert COUNTS == NO_HOST_TRAFFIC, f"{type(block).__name__} touched the host: {COUNTS}"
    name = type(block).__name__
    assert_same_tree(out_d, out, f"{name} out")
    assert_same_tree(cache_d, cache, f"{name} cache")
    assert_same_tree(dx_d, dx, f"{name} dx")
    assert_same_tree(grads_d, grads, f"{name} grads")
    assert_same_tree(dev.forward(x_d), out, f"{name}.forward without cache")
    return grads


# --------------------------------------------------------------------------- scan orders
ORDERS = [("raster", {}), ("column", {}), ("spiral", {}), ("hilbert", {}),
          ("local", {"window": 2}), ("diagonal", {})]


@pytest.mark.parametrize("name, options", ORDERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_to_and_from_sequence_on_device(fake_xp, rng, name, options, dtype):
    H, W = 3, 4
    perm = scan_order(name, H, W, **options)
    x = rng.standard_normal((2, H, W, 3)).astype(dtype)
    check_function(to_sequence, [x, perm], host=(1,))
    check_function(to_sequence, [x.reshape(2, H * W, 3), perm], host=(1,))  # (B, L, C) tokens
    y = rng.standard_normal((2, H * W, 3)).astype(dtype)
    check_function(from_sequence, [y, perm, H, W], host=(1,))


def test_partial_orders_on_device(fake_xp, rng):
    H, W = 3, 5  # odd sizes: sub-grids of different lengths, cells outside stay zero
    for sub in atrous_subgrids(H, W, 2):
        x = rng.standard_normal((2, H, W, 3))
        check_function(to_sequence, [x, sub], host=(1,))
        check_function(from_sequence, [rng.standard_normal((2, sub.size, 3)), sub, H, W],
                       host=(1,))


def test_index_arrays_are_copied_to_the_device_once(fake_xp, rng):
    _xp._DEVICE_COPIES.clear()
    perm = scan_order("snake", 3, 4)
    x = fake.asarray(rng.standard_normal((2, 3, 4, 3)))
    reset_counts()
    seq = to_sequence(x, perm)
    assert COUNTS == {"sync": 0, "to_host": 0, "to_device": 1}  # the perm, once
    from_sequence(seq, perm.copy(), 3, 4)  # an equal perm (another object) hits the cache
    to_sequence(x, perm)
    assert COUNTS == {"sync": 0, "to_host": 0, "to_device": 1}
    assert len(_xp._DEVICE_COPIES) == 1
    to_sequence(x, perm[::-1].copy())  # a different order is a new entry
    assert COUNTS["to_device"] == 2 and len(_xp._DEVICE_COPIES) == 2


def test_numpy_inputs_never_touch_the_device_cache(rng):
    _xp._DEVICE_COPIES.clear()
    perm = scan_order("spiral", 3, 3)
    y = to_sequence(rng.standard_normal((1, 3, 3, 2)), perm)
    assert isinstance(from_sequence(y, perm, 3, 3), np.ndarray)
    assert not _xp._DEVICE_COPIES


# --------------------------------------------------------------------------- multi-direction
def test_cross_scan_and_merge_on_device(fake_xp, rng):
    x = rng.standard_normal((2, 3, 4, 2))
    check_function(cross_scan, [x])
    check_function(cross_merge, [rng.standard_normal((2, 4, 12, 2)), 3, 4])


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_schemes_scan_and_merge_on_device(fake_xp, rng, scheme):
    H, W = 4, 4  # sides multiples of the es2d step: every scheme stacks
    perms = scan_scheme(scheme, H, W)
    x = rng.standard_normal((2, H, W, 3)).astype(np.float32)
    check_function(multi_scan, [x, perms], host=(1,))
    ys = rng.standard_normal((2, len(perms), perms[0].size, 3)).astype(np.float32)
    for reduce in ("sum", "mean"):
        check_function(multi_merge, [ys, perms, H, W], {"reduce": reduce}, host=(1,))


def test_unstacked_scan_and_unequal_merge_on_device(fake_xp, rng):
    H, W = 3, 5
    perms = scan_scheme("es2d", H, W)  # sub-grids of lengths 6, 3, 4, 2
    x = rng.standard_normal((2, H, W, 3))
    check_function(multi_scan, [x, perms], {"stack": False}, host=(1,))
    ys = [rng.standard_normal((2, q.size, 3)) for q in perms]
    check_function(multi_merge, [ys, perms, H, W], {"reduce": "sum"}, host=(1,))
    # cells visited unequally often: "mean" divides by a per-cell count (a cached constant)
    orders = [scan_order("raster", H, W), perms[0], perms[2]]
    ys = [rng.standard_normal((2, q.size, 3)) for q in orders]
    check_function(multi_merge, [ys, orders, H, W], {"reduce": "mean"}, host=(1,))


# --------------------------------------------------------------------------- patch embedding
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_patch_embed_on_device(fake_xp, rng, bias, dtype):
    pe = PatchEmbed(3, 5, 2, seed=rng, dtype=dtype)
    if not bias:
        pe = PatchEmbed.from_state_dict({"proj.weight": pe.params["proj.weight"]})
    check_block(pe, rng.standard_normal((2, 4, 6, 3)).astype(dtype), rng)


# --------------------------------------------------------------------------- class token, position
@pytest.mark.parametrize("position", ["head", "middle", "tail", 1])
def test_cls_token_on_device(fake_xp, rng, position):
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    cls = rng.standard_normal((1, 1, 3)).astype(np.float32)
    y, idx = check_function(insert_cls_token, [x, cls, position], warm=False)
    check_function(insert_cls_token_backward, [rng.standard_normal((2, 6, 3)), idx], warm=False)


def test_position_embedding_on_device(fake_xp, rng):
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    pos = rng.standard_normal((1, 5, 3))
    check_function(add_position_embedding, [x, pos], warm=False)
    check_function(add_position_embedding_backward, [rng.standard_normal((2, 5, 3))], warm=False)


# --------------------------------------------------------------------------- Vim
@pytest.mark.parametrize("bias, conv_bias", [(False, True), (True, False)])
def test_vim_mixer_on_device(fake_xp, rng, bias, conv_bias):
    mixer = perturb(VimMixer(d_model=4, bias=bias, conv_bias=conv_bias, seed=1, **TINY), rng)
    check_block(mixer, rng.standard_normal((2, 5, 4)), rng)


def test_vim_block_on_device(fake_xp, rng):
    blk = perturb(VimBlock(d_model=4, seed=2, dtype=np.float32, **TINY), rng)
    check_block(blk, rng.standard_normal((2, 5, 4)).astype(np.float32), rng)


# --------------------------------------------------------------------------- SS2D and relatives
@pytest.mark.parametrize("directions, H, W", [
    (("raster", "column", "raster_reversed", "column_reversed"), 3, 4),  # VMamba's cross-scan
    ("zigma", 3, 4),                                   # 8 directions merged by "mean"
    ("es2d", 3, 5),                                    # unequal lengths: one scan per direction
    (["hilbert", ("spiral", {"reverse": True})], 3, 4),  # a list of names and (name, options)
])
def test_ss2d_on_device(fake_xp, rng, directions, H, W):
    ss2d = perturb(SS2D(d_model=4, directions=directions, seed=3, **TINY), rng)
    check_block(ss2d, rng.standard_normal((2, H, W, 4)), rng)


@pytest.mark.parametrize("bias", [True, False])
def test_ss2d_biases_and_float32_on_device(fake_xp, rng, bias):
    ss2d = perturb(SS2D(d_model=4, bias=bias, conv_bias=not bias, seed=4, dtype=np.float32, **TINY), rng)
    check_block(ss2d, rng.standard_normal((1, 3, 3, 4)).astype(np.float32), rng)


def test_local_ss2d_and_es2d_on_device(fake_xp, rng):
    check_block(perturb(LocalSS2D(d_model=4, window=2, seed=5, **TINY), rng),
                rng.standard_normal((1, 4, 3, 4)), rng)
    check_block(perturb(ES2D(d_model=4, step=2, seed=6, **TINY), rng),
                rng.standard_normal((1, 4, 4, 4)), rng)


@pytest.mark.parametrize("mixer_cls", [SS2D, ES2D])
def test_vss_block_on_device(fake_xp, rng, mixer_cls):
    blk = perturb(VSSBlock(d_model=4, mixer_cls=mixer_cls, seed=7, **TINY), rng)
    check_block(blk, rng.standard_normal((2, 4, 4, 4)), rng)


# --------------------------------------------------------------------------- PlainMamba
@pytest.mark.parametrize("bias, conv_bias", [(False, True), (True, False)])
def test_plainmamba_mixer_on_device(fake_xp, rng, bias, conv_bias):
    mixer = perturb(PlainMambaMixer(d_model=4, d_conv=3, bias=bias, conv_bias=conv_bias, seed=8,
                                    **TINY), rng)
    grads = check_block(mixer, rng.standard_normal((2, 3, 4, 4)), rng)
    assert np.all(grads["direction_Bs"] != 0)  # every move code (start, 4 moves) was used


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_plainmamba_block_on_device(fake_xp, rng, norm):
    blk = perturb(PlainMambaBlock(d_model=4, norm=norm, d_conv=3, seed=9, dtype=np.float32, **TINY), rng)
    check_block(blk, rng.standard_normal((1, 3, 3, 4)).astype(np.float32), rng)
