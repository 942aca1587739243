"""The bad-input battery: every public entry point refuses what it cannot compute, clearly.

Each case calls one public function with one bad argument and asserts the exception type
(``ValueError`` for a bad value or shape, ``TypeError`` for a bad kind of thing) and that
the message names the argument, with its shape or value where that is what is wrong
(DESIGN.md: "messages name argument, shape, and what was expected").  The command line
turns the same errors into one line on stderr and exit status 2.

Sections: the unclear errors of issue 13 (each kept by a case); the selective scan and its
backward on every CPU backend (a sweep over each argument: None, wrong dtype, wrong ndim,
zero-size, non-finite, mismatched shape, complex where real is required); the LTI
functions, the discretization, the continuous SSM, the scans, the layers; the Mamba block
and the vision blocks; ``build_model``; the data loaders; the optimisers and ``train``;
checkpoints; the command line.  A case list is data: adding a case is one line.

Valid inputs that only look unusual (integers, booleans, strided views) are accepted and
give the float64 result: that is tested too, so the battery cannot pass by refusing
everything.
"""
from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
from cases import scan_case

import fast
import ssm_ref
import ssm_ref.optim
import ssm_ref.train
from ssm_ref import cli

# --------------------------------------------------------------------------- helpers


def expect(fn, exc, *words):
    """``fn()`` raises ``exc`` (exactly that class or a subclass) naming every one of ``words``."""
    with pytest.raises(exc) as info:
        fn()
    assert type(info.value) is not AssertionError
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in the message {msg!r}"
    return msg


def cpu_backends():
    """The CPU backends of ``fast`` that can run here (``ref`` always)."""
    return [name for name in ("ref", "numba") if fast.backends()[name][0]]


CPU_BACKENDS = cpu_backends()
RNG = np.random.default_rng(1313)


def _scan_kw(**over):
    kw = scan_case(np.random.default_rng(7), "variable", "constant", batch=2, dim=4, length=5,
                   dstate=3, extras=True)
    kw.update(over)
    return kw


# =========================================================================== issue 13's list


def test_reference_scan_with_u_none_names_u():
    kw = _scan_kw(u=None)
    expect(lambda: ssm_ref.selective_scan(**kw), TypeError, "Parameter u", "None", "(B, D, L)")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backward_with_u_none_names_u(backend):
    kw = _scan_kw()
    dout = np.ones_like(kw["u"])
    kw["u"] = None
    expect(lambda: fast.selective_scan_backward(dout, **kw, backend=backend), TypeError,
           "Parameter u", "None")


def test_hidden_attention_still_needs_no_u():
    kw = _scan_kw()
    alpha = ssm_ref.hidden_attention(kw["delta"], kw["A"], kw["B"], kw["C"],
                                     delta_bias=kw["delta_bias"], delta_softplus=True)
    assert alpha.shape == (2, 4, 5, 5)


def test_a_log_that_overflows_is_named_a_log_not_a():
    block = ssm_ref.MambaBlock(d_model=4, d_state=3, seed=0)
    block.params["A_log"] = np.full_like(block.params["A_log"], 800.0)
    msg = expect(lambda: block(RNG.standard_normal((1, 5, 4))), ValueError, "Parameter A_log",
                 "800", "exp(A_log)")
    assert "Parameter A " not in msg


def test_a_log_that_overflows_through_load_state_dict():
    block = ssm_ref.MambaBlock(d_model=4, d_state=3, seed=0)
    sd = block.state_dict()
    sd["A_log"] = np.full_like(sd["A_log"], 800.0)
    block.load_state_dict(sd)  # finite: accepted; A = -exp(800) is not
    expect(lambda: block(RNG.standard_normal((1, 5, 4))), ValueError, "A_log", "800")


@pytest.mark.parametrize("make, key, x", [
    (lambda: ssm_ref.vision.SS2D(d_model=4, d_state=3, seed=0), "A_logs", (1, 3, 3, 4)),
    (lambda: ssm_ref.vision.PlainMambaMixer(d_model=4, d_state=3, seed=0), "A_log", (1, 3, 3, 4)),
    (lambda: ssm_ref.vision.VimMixer(d_model=4, d_state=3, seed=0), "A_b_log", (1, 5, 4)),
], ids=["SS2D", "PlainMamba", "Vim-backward"])
def test_vision_a_log_that_overflows_is_named(make, key, x):
    mixer = make()
    mixer.params[key] = np.full_like(mixer.params[key], 800.0)
    expect(lambda: mixer(RNG.standard_normal(x)), ValueError, f"Parameter {key}", "800")


@pytest.mark.parametrize("cls, key", [
    ("SS2D", "A_logs"), ("PlainMambaMixer", "A_log"), ("VimMixer", "A_log"),
    ("MambaBlock", "A_log"),
])
def test_misshaped_a_log_is_blamed_not_x_proj(cls, key):
    owner = getattr(ssm_ref.vision, cls, None) or getattr(ssm_ref, cls)
    sd = owner(d_model=4, d_state=3).state_dict()
    sd[key] = np.zeros((sd[key].shape[0], 5))  # d_state 5 where x_proj holds 3
    msg = expect(lambda: owner.from_state_dict(sd), ValueError, f"state_dict[{key!r}]",
                 f"{(sd[key].shape[0], 5)}", "d_state = 5", "fits d_state = 3")
    assert msg.index(key) < msg.index("x_proj")


@pytest.mark.parametrize("where", ["load_state_dict", "from_state_dict"])
def test_non_string_state_dict_key_is_a_type_error(where):
    block = ssm_ref.MambaBlock(d_model=4, d_state=3)
    sd = block.state_dict()
    sd[7] = np.zeros(3)
    sd["junk"] = np.zeros(3)  # with a str key too: no sorting of mixed keys
    fn = (lambda: block.load_state_dict(sd)) if where == "load_state_dict" else (
        lambda: ssm_ref.MambaBlock.from_state_dict(sd))
    expect(fn, TypeError, "Parameter state_dict", "7", "int")


def test_non_string_key_of_vision_and_lm_state_dicts():
    sd = {**ssm_ref.vision.SS2D(d_model=4, d_state=3).state_dict(), 3.5: np.zeros(1)}
    expect(lambda: ssm_ref.vision.SS2D.from_state_dict(sd), TypeError, "state_dict", "3.5")
    expect(lambda: ssm_ref.vision.vmamba_release_names({0: 1}), TypeError, "state_dict", "0")
    cfg = ssm_ref.MambaLMConfig(d_model=4, n_layer=1, vocab_size=8)
    expect(lambda: ssm_ref.MambaLM.from_state_dict({1: 2}, cfg), TypeError, "state_dict")


def test_non_string_key_of_an_optimizer_state():
    params = {"w": np.zeros(3)}
    opt = ssm_ref.optim.AdamW(params)
    expect(lambda: opt.load_state_dict({"t": np.array(0), "lr": np.array(0.1),
                                        "weight_decay": np.array(0.0), 5: np.zeros(3)}),
           TypeError, "optimizer state", "5")


# -- checkpoints (the loader's own tests are in test_train; the listed cases are kept here)

def _checkpoint(tmp_path):
    from test_train import TinyMLP
    model = TinyMLP(seed=0)
    opt = ssm_ref.optim.AdamW(model.params, lr=0.01)
    opt.step({k: RNG.standard_normal(v.shape) for k, v in model.params.items()})
    path = ssm_ref.train.save_checkpoint(tmp_path / "ckpt.npz", model, opt, epoch=1)
    with np.load(path, allow_pickle=False) as f:
        return model, {k: f[k] for k in f.files}


def _rewrite(tmp_path, arrays, **changes):
    path = tmp_path / "bad.npz"
    np.savez(path, **{**arrays, **changes})
    return path


@pytest.mark.parametrize("entry, value, words", [
    ("epoch", np.array(-1), ["'epoch'", "-1", ">= 0"]),
    ("optim/t", np.array(-1), ["'t'", "-1", ">= 0"]),
    ("optim/exp_avg.fc1.bias", np.full(16, np.nan), ["exp_avg.fc1.bias", "non-finite"]),
    ("optim/exp_avg_sq.gain", np.full(16, np.inf), ["exp_avg_sq.gain", "non-finite"]),
    ("optim/betas", np.array([1.0, 1.0]), ["'betas'", "[1.0, 1.0]", "[0, 1)"]),
    ("optim/exp_avg.fc1.weight", np.float64(0.5), ["exp_avg.fc1.weight", "shape ()"]),
    ("optim/exp_avg.fc1.weight", np.zeros((1, 4)), ["exp_avg.fc1.weight", "(1, 4)"]),
    ("version", np.array(99), ["'version'", "99"]),
])
def test_bad_checkpoint_entry(tmp_path, entry, value, words):
    model, arrays = _checkpoint(tmp_path)
    path = _rewrite(tmp_path, arrays, **{entry: value})
    before = {k: v.copy() for k, v in model.params.items()}
    opt = ssm_ref.optim.AdamW(model.params, lr=0.01)
    expect(lambda: ssm_ref.train.load_checkpoint(path, model, opt), ValueError, str(path), *words)
    assert all(np.array_equal(before[k], model.params[k]) for k in before)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_checkpoint_is_a_clear_value_error(tmp_path, keep):
    model, _ = _checkpoint(tmp_path)
    raw = (tmp_path / "ckpt.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(ValueError) as info:
        ssm_ref.train.load_checkpoint(cut, model)
    assert not isinstance(info.value, zipfile.BadZipFile)
    assert str(cut) in str(info.value) and "truncated or corrupt" in str(info.value)


# -- train()

def _tiny_data(n_train=20, n_test=10):
    x = RNG.standard_normal((n_train + n_test, 8, 8, 1))
    y = np.arange(n_train + n_test) % 10
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _train(**kw):
    from test_train import TinyMLP
    data = kw.pop("dataset", None) or _tiny_data()
    return ssm_ref.train.train(TinyMLP(seed=0), data, **{"epochs": 1, "progress": False, **kw})


@pytest.mark.parametrize("value", [math.inf, math.nan, -1, "1", True])
def test_warmup_epochs_refused_by_name(value):
    exc = ValueError
    expect(lambda: _train(warmup_epochs=value), exc, "warmup_epochs", repr(value))


@pytest.mark.parametrize("which", ["test", "train"])
def test_empty_data_set_is_refused_by_name(which):
    xtr, ytr, xte, yte = _tiny_data()
    data = (xtr, ytr, xte[:0], yte[:0]) if which == "test" else (xtr[:0], ytr[:0], xte, yte)
    expect(lambda: _train(dataset=data), ValueError, f"y_{which}", "empty")


# =========================================================================== the selective scan
# One valid call (B = 2, D = 4, L = 5, N = 3; variable B, constant C, every option on), then
# one argument made bad at a time.  The same list runs through the forward and the backward
# of every CPU backend: they share one check (ssm_ref.scan_args), so the messages agree.

SCAN_ARRAYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")
REQUIRED = ("u", "delta", "A", "B", "C")
REAL_ONLY = ("u", "delta", "D", "z", "delta_bias")


def _poke(value, where=0):
    """A copy of ``value`` with one entry set to ``where`` (NaN, inf...)."""
    out = np.array(value, dtype=np.result_type(value, np.float64))
    out.flat[out.size // 2] = where
    return out


def _grow(a):
    """``a`` with its last axis one longer (a mismatched shape of the same ndim)."""
    return np.concatenate([a, a[..., :1]], axis=-1)


#: (id, change(kw) -> kw, exception, words; "{name}" and "{shape}" are filled in)
SCAN_VARIANTS = [
    ("object", lambda kw, n: {**kw, n: kw[n].astype(object)}, TypeError, ["Parameter {name}",
                                                                          "object"]),
    ("str", lambda kw, n: {**kw, n: np.full(kw[n].shape, "x")}, TypeError, ["Parameter {name}",
                                                                            "<U1"]),
    ("ndim+1", lambda kw, n: {**kw, n: kw[n][None]}, ValueError, ["Parameter {name}",
                                                                  "{shape}"]),
    ("mismatch", lambda kw, n: {**kw, n: _grow(kw[n])}, ValueError, ["Parameter {name}",
                                                                     "{shape}"]),
    ("nan", lambda kw, n: {**kw, n: _poke(kw[n], np.nan)}, ValueError, ["Parameter {name}",
                                                                        "non-finite"]),
    ("inf", lambda kw, n: {**kw, n: _poke(kw[n], -np.inf)}, ValueError, ["Parameter {name}",
                                                                         "non-finite"]),
]


def _scan_cases():
    cases = []
    for name in SCAN_ARRAYS:
        if name in REQUIRED:
            cases.append((name, "None", lambda kw, n: {**kw, n: None}, TypeError,
                          ["Parameter {name}", "None"]))
        for vid, change, exc, words in SCAN_VARIANTS:
            if vid == "mismatch" and name in ("u", "A"):  # they set the sizes the others follow
                change = (lambda kw, n: {**kw, n: kw[n][:-1]})  # (B - 1, D, L) or (D - 1, N)
                words = ["Parameter {name}" if name == "A" else "of u", "{shape}"]
            cases.append((name, vid, change, exc, words))
        if name in REAL_ONLY:
            cases.append((name, "complex", lambda kw, n: {**kw, n: kw[n] + 1j}, TypeError,
                          ["Parameter {name}", "complex"]))
    cases += [
        ("B", "complex-with-real-A", lambda kw, n: {**kw, n: kw[n] + 1j}, TypeError,
         ["Parameter B", "complex", "A is real"]),
        ("C", "complex-with-real-A", lambda kw, n: {**kw, n: kw[n] + 1j}, TypeError,
         ["Parameter C", "complex", "A is real"]),
        ("h0", "complex-with-real-A", lambda kw, n: {**kw, n: kw[n] + 1j}, TypeError,
         ["Parameter h0", "complex"]),
        ("A", "positive", lambda kw, n: {**kw, n: _poke(kw[n], 0.5)}, ValueError,
         ["Parameter A", "positive real part", "0.5"]),
        ("delta", "negative-step", lambda kw, n: {**kw, n: -np.abs(kw[n]) - 30.0,
                                                  "delta_softplus": False},
         ValueError, ["Parameter delta", "negative step"]),
        ("B", "groups-not-dividing-D", lambda kw, n: {**kw, n: RNG.standard_normal((2, 3, 3, 5))},
         ValueError, ["Parameter B", "(2, 3, 3, 5)", "G = 3", "D = 4"]),
        ("B", "5-D", lambda kw, n: {**kw, n: kw[n][None, None]}, ValueError,
         ["Parameter B", "(1, 1, 2, 3, 5)", "5-D"]),
        ("u", "zero-length", lambda kw, n: _zero(kw, "length"), ValueError,
         ["Parameter u", "(2, 4, 0)", ">= 1"]),
        ("u", "zero-batch", lambda kw, n: _zero(kw, "batch"), ValueError,
         ["Parameter u", "(0, 4, 5)", ">= 1"]),
        ("A", "zero-state", lambda kw, n: _zero(kw, "dstate"), ValueError,
         ["Parameter A", "(4, 0)", ">= 1"]),
        ("delta_softplus", "str", lambda kw, n: {**kw, n: "yes"}, TypeError,
         ["Parameter delta_softplus", "'yes'", "bool"]),
        ("delta_softplus", "None", lambda kw, n: {**kw, n: None}, TypeError,
         ["Parameter delta_softplus", "None"]),
    ]
    return cases


def _zero(kw, axis):
    """Valid shapes with one size 0: the scan must refuse it, naming the array that carries it."""
    sizes = {**dict(batch=2, dim=4, length=5, dstate=3), axis: 0}
    b, d, l, n = sizes["batch"], sizes["dim"], sizes["length"], sizes["dstate"]
    return dict(u=np.ones((b, d, l)), delta=np.ones((b, d, l)), A=-np.ones((d, n)),
                B=np.ones((b, n, l)), C=np.ones((d, n)), D=np.ones(d), z=np.ones((b, d, l)),
                delta_bias=np.ones(d), h0=np.ones((b, d, n)), delta_softplus=True)


SCAN_CASES = _scan_cases()


def _fill(words, name, bad):
    shape = str(tuple(np.shape(bad))) if bad is not None and not isinstance(bad, str) else ""
    return [w.format(name=name, shape=shape) for w in words]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name, vid, change, exc, words", SCAN_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in SCAN_CASES])
def test_scan_forward_refuses(backend, name, vid, change, exc, words):
    kw = change(_scan_kw(), name)
    expect(lambda: fast.selective_scan(**kw, backend=backend), exc,
           *_fill(words, name, kw.get(name)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name, vid, change, exc, words", SCAN_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in SCAN_CASES])
def test_scan_backward_refuses(backend, name, vid, change, exc, words):
    kw = change(_scan_kw(), name)
    dout = np.ones((2, 4, 5))
    if vid.startswith("zero"):
        dout = np.ones_like(kw["u"])
    expect(lambda: fast.selective_scan_backward(dout, **kw, backend=backend), exc,
           *_fill(words, name, kw.get(name)))


BACKWARD_EXTRA = [
    ("dout", None, TypeError, ["Parameter dout", "None"]),
    ("dout", np.ones((2, 4, 6)), ValueError, ["Parameter dout", "(2, 4, 6)", "(2, 4, 5)"]),
    ("dout", np.ones((2, 4)), ValueError, ["Parameter dout", "(2, 4)", "3-D"]),
    ("dout", _poke(np.ones((2, 4, 5)), np.nan), ValueError, ["Parameter dout", "non-finite"]),
    ("dout", np.ones((2, 4, 5)) + 1j, TypeError, ["Parameter dout", "complex"]),
    ("dout", np.full((2, 4, 5), "x"), TypeError, ["Parameter dout"]),
    ("dlast_state", np.ones((2, 4, 4)), ValueError, ["Parameter dlast_state", "(2, 4, 4)",
                                                     "(2, 4, 3)"]),
    ("dlast_state", _poke(np.ones((2, 4, 3)), np.inf), ValueError, ["Parameter dlast_state",
                                                                     "non-finite"]),
    ("dlast_state", np.ones((2, 4, 3)) + 1j, TypeError, ["Parameter dlast_state", "complex"]),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name, bad, exc, words", BACKWARD_EXTRA,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BACKWARD_EXTRA)])
def test_scan_backward_refuses_bad_cotangents(backend, name, bad, exc, words):
    kw = _scan_kw()
    args = {"dout": np.ones((2, 4, 5)), "dlast_state": None, name: bad}
    expect(lambda: fast.selective_scan_backward(args["dout"], **kw,
                                                dlast_state=args["dlast_state"],
                                                backend=backend), exc, *words)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("value", [1, "yes", None])
def test_return_last_state_must_be_a_bool(backend, value):
    expect(lambda: fast.selective_scan(**_scan_kw(), return_last_state=value, backend=backend),
           TypeError, "Parameter return_last_state", repr(value))


def test_unknown_backend_is_refused_by_name():
    expect(lambda: fast.selective_scan(**_scan_kw(), backend="tpu"), ValueError, "tpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unusual_but_valid_scan_inputs_are_accepted(backend):
    """Integers and booleans are numbers (promoted to float64); strided views are read as
    they are: each gives the result of the plain float64 call, exactly."""
    kw = _scan_kw()
    want = fast.selective_scan(**kw, backend=backend)
    ints = {**kw, "u": np.round(kw["u"] * 4).astype(np.int64)}
    assert np.array_equal(fast.selective_scan(**ints, backend=backend),
                          fast.selective_scan(**{**ints, "u": ints["u"].astype(np.float64)},
                                              backend=backend))
    bools = {**kw, "D": kw["D"] > 0}
    assert np.array_equal(fast.selective_scan(**bools, backend=backend),
                          fast.selective_scan(**{**bools, "D": bools["D"].astype(np.float64)},
                                              backend=backend))
    strided = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            big = np.zeros(v.shape[:-1] + (2 * v.shape[-1],), v.dtype)
            big[..., ::2] = v
            strided[k] = big[..., ::2]  # non-contiguous, same values
            assert not strided[k].flags.c_contiguous or v.shape[-1] == 1
        else:
            strided[k] = v
    assert np.array_equal(fast.selective_scan(**strided, backend=backend), want)
    lists = {**kw, "D": kw["D"].tolist(), "A": kw["A"].tolist()}
    assert np.array_equal(fast.selective_scan(**lists, backend=backend), want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_float16_of_many_elements(backend):
    """A strided float16 array of >= 4096 elements (the tiled copy once raised Numba's
    NotImplementedError) gives the result of its contiguous copy."""
    kw = scan_case(np.random.default_rng(3), batch=2, dim=8, length=512, dstate=2, extras=False)
    big = np.zeros((2, 8, 1024), np.float16)
    big[..., ::2] = kw["u"]
    u = big[..., ::2]
    assert u.size >= 4096 and not u.flags.c_contiguous
    kw16 = {**kw, "u": u}
    y = fast.selective_scan(**kw16, backend=backend)
    assert y.dtype == np.float16
    assert np.array_equal(y, fast.selective_scan(**{**kw16, "u": np.ascontiguousarray(u)},
                                                 backend=backend))


# =========================================================================== the other functions
# Each function with one valid call; then, for each array argument, the kinds every public
# function refuses (None, a string, Python objects: TypeError naming it) and the shape and
# value cases that apply to it (ValueError naming it and its shape).  Integer sizes refuse
# None, strings, floats, booleans (TypeError) and values below their minimum (ValueError).

from ssm_ref import scans  # noqa: E402

_Ad, _Bd, _Cd = -np.eye(3) - 0.1, np.ones((3, 1)), np.ones((1, 3))
_T = np.linspace(0.0, 1.0, 5)
_SEQ = dict(a=np.full((6, 3), 0.5), b=np.ones((6, 3)))

#: name -> (function, valid keyword arguments, array arguments and their extra bad cases,
#: integer arguments and their minimum)
FUNCTIONS = {
    "scan_lti": (ssm_ref.scan_lti,
                 dict(Abar=np.full(3, 0.5), Bbar=np.ones(3), C=np.ones(3), u=np.ones((2, 6))),
                 {"Abar": ["ndim", "nan", "empty"], "Bbar": ["ndim", "nan", "empty"],
                  "C": ["nan", "empty"], "u": ["nan", "empty"]}, {}),
    "ssm_kernel": (ssm_ref.ssm_kernel, dict(Abar=np.full(3, 0.5), Bbar=np.ones(3), C=np.ones(3),
                                            L=6),
                   {"Abar": ["ndim", "nan", "empty"], "Bbar": ["ndim", "nan", "empty"],
                    "C": ["nan", "empty"]}, {"L": 1}),
    "causal_conv": (ssm_ref.causal_conv, dict(u=np.ones((2, 6)), K=np.ones(6)),
                    {"u": ["nan", "empty"], "K": ["ndim", "nan", "empty"]}, {}),
    "discretize": (ssm_ref.discretize, dict(A=_Ad, B=_Bd, dt=0.1),
                   {"A": ["ndim", "nan", "empty", "mismatch"], "B": ["ndim", "nan", "empty",
                                                                    "fewer"]}, {}),
    "poles": (ssm_ref.poles, dict(A=_Ad), {"A": ["ndim", "nan", "empty", "mismatch"]}, {}),
    "is_stable": (ssm_ref.is_stable, dict(A=_Ad), {"A": ["ndim", "nan", "empty"]}, {}),
    "impulse_response": (ssm_ref.impulse_response, dict(A=_Ad, B=_Bd, C=_Cd, D=0.0, t=_T),
                         {"A": ["ndim", "nan", "empty"], "B": ["ndim", "nan", "empty", "fewer"],
                          "C": ["ndim", "nan", "empty", "mismatch"], "t": ["ndim", "nan", "empty"]},
                         {}),
    "step_response": (ssm_ref.step_response, dict(A=_Ad, B=_Bd, C=_Cd, D=0.0, t=_T),
                      {"A": ["ndim", "nan"], "B": ["empty", "fewer"], "C": ["empty"],
                       "t": ["ndim", "nan", "empty"]}, {}),
    "simulate": (ssm_ref.simulate, dict(A=_Ad, B=_Bd, C=_Cd, D=0.0, u=np.ones((5, 1)), t=_T),
                 {"A": ["nan"], "B": ["empty"], "u": ["ndim", "nan", "mismatch"],
                  "t": ["ndim", "nan"]}, {}),
    "transfer_function": (ssm_ref.transfer_function,
                          dict(A=_Ad, B=_Bd, C=_Cd, D=0.0, s=np.array([1j, 2.0])),
                          {"A": ["nan", "empty"], "B": ["empty"], "C": ["mismatch"]}, {}),
    "ContinuousSSM": (ssm_ref.ContinuousSSM, dict(A=_Ad, B=_Bd, C=_Cd, D=0.0),
                      {"A": ["ndim", "nan", "empty"], "B": ["empty", "nan"],
                       "C": ["mismatch", "nan"]}, {}),
    "hippo_legs": (ssm_ref.hippo_legs, dict(N=4), {}, {"N": 1}),
    "hippo_legs_nplr": (ssm_ref.hippo_legs_nplr, dict(N=4), {}, {"N": 1}),
    "s4d_lin": (ssm_ref.s4d_lin, dict(N=4), {}, {"N": 1}),
    "s4d_inv": (ssm_ref.s4d_inv, dict(N=4), {}, {"N": 1}),
    "s4d_real": (ssm_ref.s4d_real, dict(N=4), {}, {"N": 1}),
    "mamba_a_log": (ssm_ref.mamba_a_log, dict(d_inner=4, d_state=3), {},
                    {"d_inner": 1, "d_state": 1}),
    "hippo_legs_memory": (ssm_ref.hippo_legs_memory, dict(u=np.sin(np.linspace(0, 1, 20)), N=4),
                          {"u": ["nan", "empty"]}, {"N": 1}),
    "legendre_reconstruct": (ssm_ref.legendre_reconstruct,
                             dict(coeffs=np.ones(4), s=np.linspace(0, 1, 5)),
                             {"coeffs": ["nan", "empty"], "s": ["ndim"]}, {}),
    **{name: (getattr(scans, name), dict(_SEQ), {"a": ["nan", "empty", "ndim"],
                                                   "b": ["nan", "empty", "ndim"]}, {})
       for name in ("scan", "scan_sequential", "scan_hillis_steele", "scan_blelloch",
                    "scan_logspace")},
    "scan_chunked": (scans.scan_chunked, dict(_SEQ, chunk_size=2),
                     {"a": ["nan", "empty"], "b": ["nan", "ndim"]}, {"chunk_size": 1}),
    "linear": (ssm_ref.linear, dict(x=np.ones((2, 3)), W=np.ones((4, 3))),
               {"x": ["nan", "mismatch"], "W": ["ndim", "nan", "empty"]}, {}),
    "silu": (ssm_ref.silu, dict(x=np.ones((2, 3))), {"x": ["nan"]}, {}),
    "softplus": (ssm_ref.softplus, dict(x=np.ones((2, 3))), {"x": ["nan"]}, {}),
    "gelu": (ssm_ref.gelu, dict(x=np.ones((2, 3))), {"x": ["nan"]}, {}),
    "causal_conv1d": (ssm_ref.causal_conv1d, dict(x=np.ones((2, 3, 5)), weight=np.ones((3, 4))),
                      {"x": ["nan", "ndim"], "weight": ["ndim", "nan", "fewer"]}, {}),
    "rms_norm": (ssm_ref.rms_norm, dict(x=np.ones((2, 3)), weight=np.ones(3)),
                 {"x": ["nan", "empty"], "weight": ["ndim", "nan", "empty"]}, {}),
    "layer_norm": (ssm_ref.layer_norm, dict(x=np.ones((2, 3)), weight=np.ones(3)),
                   {"x": ["nan", "empty"], "weight": ["ndim", "nan", "empty"]}, {}),
    "depthwise_conv2d": (ssm_ref.depthwise_conv2d,
                         dict(x=np.ones((1, 4, 4, 3)), weight=np.ones((3, 3, 3))),
                         {"x": ["nan", "ndim"], "weight": ["ndim", "nan", "fewer"]}, {}),
}


def _bad_array(v, kind):
    v = np.asarray(v)
    if kind == "ndim":
        return v[None]
    if kind == "nan":
        return _poke(v, np.nan)
    if kind == "empty":
        return v[..., :0]
    if kind == "mismatch":
        return _grow(v)
    if kind == "fewer":
        return v[:-1]
    raise AssertionError(kind)


def _function_cases():
    cases = []
    for fname, (fn, kw, arrays, ints) in FUNCTIONS.items():
        for arg in arrays:
            for vid, bad in (("None", None), ("str", "abc"),
                             ("object", np.array([object()] * 2, dtype=object))):
                cases.append((fname, arg, vid, bad, TypeError, [f"Parameter {arg}"]))
            for kind in arrays[arg]:
                bad = _bad_array(kw[arg], kind)
                words = [arg] + ([] if kind == "nan" else [str(bad.shape)])
                cases.append((fname, arg, kind, bad, ValueError, words))
        for arg, minimum in ints.items():
            for vid, bad in (("None", None), ("str", "4"), ("float", 2.5), ("bool", True),
                             ("nan", math.nan)):
                cases.append((fname, arg, vid, bad, TypeError, [f"Parameter {arg}", repr(bad)]))
            cases.append((fname, arg, "below-minimum", minimum - 1, ValueError,
                          [f"Parameter {arg}", str(minimum - 1), f">= {minimum}"]))
    return cases


FUNCTION_CASES = _function_cases()


def test_every_function_of_the_table_accepts_its_valid_call():
    for fname, (fn, kw, _, _) in FUNCTIONS.items():
        fn(**kw)  # raises if the table's valid call is not


@pytest.mark.parametrize("fname, arg, vid, bad, exc, words", FUNCTION_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in FUNCTION_CASES])
def test_function_refuses(fname, arg, vid, bad, exc, words):
    fn, kw, _, _ = FUNCTIONS[fname]
    expect(lambda: fn(**{**kw, arg: bad}), exc, *words)


@pytest.mark.parametrize("fn, kw, arg", [
    (ssm_ref.discretize, dict(A=_Ad, B=_Bd, dt=0.1), "method"),
    (ssm_ref.ssm_kernel, dict(Abar=np.full(3, 0.5), Bbar=np.ones(3), C=np.ones(3), L=6), "method"),
    (ssm_ref.causal_conv, dict(u=np.ones((2, 6)), K=np.ones(6)), "method"),
    (scans.scan, dict(_SEQ), "method"),
    (scans.scan_logspace, dict(_SEQ), "variant"),
])
def test_unknown_mode_is_refused_by_name(fn, kw, arg):
    expect(lambda: fn(**kw, **{arg: "sideways"}), ValueError, f"Parameter {arg}", "'sideways'")


@pytest.mark.parametrize("dt", [0.0, -0.1, math.inf, math.nan])
def test_discretize_step_must_be_finite_and_positive(dt):
    expect(lambda: ssm_ref.discretize(_Ad, _Bd, dt), ValueError, "Parameter dt", repr(float(dt)))


@pytest.mark.parametrize("fn", [
    lambda flag: ssm_ref.scan_lti(np.full(3, 0.5), np.ones(3), np.ones(3), np.ones(6),
                                  conjugate_pairs=flag),
    lambda flag: ssm_ref.ssm_kernel(np.full(3, 0.5), np.ones(3), np.ones(3), 6,
                                    conjugate_pairs=flag),
    lambda flag: ssm_ref.s4d_lin(4, conjugate_pairs=flag),
    lambda flag: ssm_ref.s4d_inv(4, conjugate_pairs=flag),
], ids=["scan_lti", "ssm_kernel", "s4d_lin", "s4d_inv"])
@pytest.mark.parametrize("flag", ["yes", None, 1])
def test_conjugate_pairs_must_be_a_bool(fn, flag):
    expect(lambda: fn(flag), TypeError, "Parameter conjugate_pairs", repr(flag))


# =========================================================================== blocks and models

from ssm_ref import vision  # noqa: E402

#: name -> (constructor, a valid input shape)
BLOCKS = {
    "MambaBlock": (ssm_ref.MambaBlock, (2, 5, 4)),
    "VimMixer": (vision.VimMixer, (2, 5, 4)),
    "VimBlock": (vision.VimBlock, (2, 5, 4)),
    "SS2D": (vision.SS2D, (2, 3, 3, 4)),
    "VSSBlock": (vision.VSSBlock, (2, 3, 3, 4)),
    "LocalSS2D": (vision.LocalSS2D, (2, 4, 4, 4)),
    "ES2D": (vision.ES2D, (2, 4, 4, 4)),
    "PlainMambaMixer": (vision.PlainMambaMixer, (2, 3, 3, 4)),
    "PlainMambaBlock": (vision.PlainMambaBlock, (2, 3, 3, 4)),
}


def _block_inputs(shape):
    """(id, bad x, exception, words) for a block whose input has ``shape``."""
    ones = np.ones(shape)
    return [
        ("None", None, TypeError, ["Parameter x", "None"]),
        ("str", "abc", TypeError, ["Parameter x", "<U3"]),
        ("object", ones.astype(object), TypeError, ["Parameter x", "object"]),
        ("complex", ones + 1j, TypeError, ["Parameter x", "complex"]),
        ("ndim-1", ones[0], ValueError, ["Parameter x", str(shape[1:])]),
        ("ndim+1", ones[None], ValueError, ["Parameter x", str((1,) + shape)]),
        ("channels", np.ones(shape[:-1] + (5,)), ValueError, ["Parameter x",
                                                             str(shape[:-1] + (5,))]),
        ("nan", _poke(ones, np.nan), ValueError, ["Parameter x", "non-finite"]),
        ("inf", _poke(ones, np.inf), ValueError, ["Parameter x", "non-finite"]),
        ("empty-batch", np.ones((0,) + shape[1:]), ValueError, ["Parameter x",
                                                               str((0,) + shape[1:])]),
        ("empty-length", np.ones(shape[:1] + (0,) + shape[2:]), ValueError,
         ["Parameter x", str(shape[:1] + (0,) + shape[2:])]),
    ]


BLOCK_CASES = [(b, *c) for b, (_, shape) in BLOCKS.items() for c in _block_inputs(shape)]


@pytest.fixture(scope="module")
def blocks():
    return {name: cls(d_model=4, d_state=3, seed=0) for name, (cls, _) in BLOCKS.items()}


@pytest.mark.parametrize("block, vid, bad, exc, words", BLOCK_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in BLOCK_CASES])
def test_block_forward_refuses(blocks, block, vid, bad, exc, words):
    expect(lambda: blocks[block](bad), exc, *words)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_block_backward_refuses(blocks, block):
    m, shape = blocks[block], BLOCKS[block][1]
    _, cache = m.forward(RNG.standard_normal(shape), return_cache=True)
    wrong = shape[:-1] + (5,)
    expect(lambda: m.backward(np.ones(wrong), cache), ValueError, "Parameter dout", str(wrong),
           str(shape))
    expect(lambda: m.backward(_poke(np.ones(shape), np.nan), cache), ValueError,
           "Parameter dout", "non-finite")
    expect(lambda: m.backward(np.ones(shape), None), TypeError, "Parameter cache")
    expect(lambda: m.backward(None, cache), TypeError, "Parameter dout")


CONFIG_CASES = [  # (field, value, exception, words)
    ("d_model", 0, ValueError, ["d_model", "0", ">= 1"]),
    ("d_model", 4.5, TypeError, ["d_model", "4.5"]),
    ("d_model", True, TypeError, ["d_model", "True"]),
    ("d_model", None, TypeError, ["d_model", "None"]),
    ("d_state", -1, ValueError, ["d_state", "-1"]),
    ("d_conv", 0, ValueError, ["d_conv", "0"]),
    ("dt_rank", 0, ValueError, ["dt_rank", "0"]),
    ("expand", math.nan, ValueError, ["expand", "nan"]),
    ("expand", -2, ValueError, ["expand", "-2"]),
    ("seed", -1, ValueError, ["seed", "-1"]),
    ("seed", 1.5, TypeError, ["seed", "1.5"]),
]


@pytest.mark.parametrize("block", list(BLOCKS))
@pytest.mark.parametrize("field, value, exc, words", CONFIG_CASES,
                         ids=[f"{c[0]}={c[1]!r}" for c in CONFIG_CASES])
def test_block_configuration_refused_by_name(block, field, value, exc, words):
    cls = BLOCKS[block][0]
    expect(lambda: cls(**{"d_model": 4, "d_state": 3, field: value}), exc, *words)


BUILD_CASES = [  # (keyword, value, exception, words)
    ("img_size", (0, 8), ValueError, ["img_size", "0"]),
    ("img_size", "8", TypeError, ["img_size", "'8'"]),
    ("img_size", None, TypeError, ["img_size", "None"]),
    ("in_chans", 0, ValueError, ["in_chans", "0"]),
    ("n_classes", 0, ValueError, ["n_classes", "0"]),
    ("n_classes", 1.5, TypeError, ["n_classes", "1.5"]),
    ("seed", -1, ValueError, ["Parameter seed", "-1"]),
    ("patch_size", 3, ValueError, ["patch_size", "3", "(8, 8)"]),
    ("bogus", 1, TypeError, ["bogus"]),
]


@pytest.mark.parametrize("name", list(vision.MODELS))
@pytest.mark.parametrize("key, value, exc, words", BUILD_CASES,
                         ids=[f"{c[0]}={c[1]!r}" for c in BUILD_CASES])
def test_build_model_refuses(name, key, value, exc, words):
    kw = {"img_size": (8, 8), "in_chans": 1, "n_classes": 10, key: value}
    expect(lambda: vision.build_model(name, **kw), exc, *words)


@pytest.mark.parametrize("name, exc", [("resnet", ValueError), (None, TypeError), (3, TypeError)])
def test_build_model_unknown_name(name, exc):
    expect(lambda: vision.build_model(name), exc, "Parameter name", repr(name))


@pytest.fixture(scope="module")
def models():
    return {name: vision.build_model(name, img_size=(8, 8), in_chans=1, n_classes=10)
            for name in vision.MODELS}


MODEL_INPUTS = [
    ("None", None, TypeError, ["Parameter x"]),
    ("3-D", np.ones((2, 8, 8)), ValueError, ["Parameter x", "(2, 8, 8)", "4-D"]),
    ("size", np.ones((2, 9, 8, 1)), ValueError, ["Parameter x", "(2, 9, 8, 1)"]),
    ("channels", np.ones((2, 8, 8, 3)), ValueError, ["Parameter x", "(2, 8, 8, 3)"]),
    ("nan", _poke(np.ones((2, 8, 8, 1)), np.nan), ValueError, ["Parameter x", "non-finite"]),
    ("empty", np.ones((0, 8, 8, 1)), ValueError, ["Parameter x", "(0, 8, 8, 1)"]),
]


@pytest.mark.parametrize("name", list(vision.MODELS))
@pytest.mark.parametrize("vid, bad, exc, words", MODEL_INPUTS, ids=[c[0] for c in MODEL_INPUTS])
def test_model_forward_refuses(models, name, vid, bad, exc, words):
    expect(lambda: models[name](bad), exc, *words)


# =========================================================================== data loaders

from ssm_ref import data as data_mod  # noqa: E402
from ssm_ref import data_files  # noqa: E402

_X, _Y = np.ones((20, 8, 8, 1)), np.arange(20) % 4

DATA_CASES = [  # (id, call, exception, words)
    ("load_dataset-unknown", lambda: data_mod.load_dataset("imagenet"), ValueError,
     ["'imagenet'"]),
    ("load_dataset-None", lambda: data_mod.load_dataset(None), TypeError, ["Parameter name"]),
    ("load_dataset-option", lambda: data_mod.load_dataset("digits", n_train=5), ValueError,
     ["n_train", "digits"]),
    ("load_dataset-seed", lambda: data_mod.load_dataset("digits", seed=-1), ValueError,
     ["Parameter seed", "-1"]),
    *[(f"digits-test_fraction={tf!r}", (lambda tf=tf: data_mod.load_digits_images(
        test_fraction=tf)), ValueError, ["Parameter test_fraction", repr(tf)])
      for tf in (0, 1, -0.1, math.nan, "0.2", None)],
    ("digits-dtype-int", lambda: data_mod.load_digits_images(dtype=np.int32), TypeError,
     ["Parameter dtype", "int32"]),
    ("digits-dtype-junk", lambda: data_mod.load_digits_images(dtype="banana"), TypeError,
     ["Parameter dtype", "'banana'"]),
    *[(f"pair-{k}={v!r}", (lambda k=k, v=v: data_mod.make_pair_images(**{"n": 10, k: v})), exc,
       [f"Parameter {k}", repr(v) if k != "seed" else "-1"])
      for k, v, exc in (("n", 0, ValueError), ("n", 2.5, TypeError), ("size", 3, ValueError),
                        ("layout", "diag", ValueError), ("n_shapes", 0, ValueError),
                        ("noise", -0.1, ValueError), ("noise", math.nan, ValueError),
                        ("noise", math.inf, ValueError), ("dtype", "banana", TypeError),
                        ("seed", -1, ValueError))],
    ("split-y-None", lambda: data_mod.stratified_split(None, 0.25, 0), ValueError,
     ["Parameter y"]),
    ("split-y-2d", lambda: data_mod.stratified_split(np.ones((5, 2), int), 0.25, 0),
     ValueError, ["Parameter y", "(5, 2)"]),
    ("split-y-float", lambda: data_mod.stratified_split(np.array([0.5, 1.0]), 0.25, 0),
     ValueError, ["Parameter y", "float64"]),
    ("split-fraction", lambda: data_mod.stratified_split(_Y, 1.0, 0), ValueError,
     ["Parameter test_fraction", "1.0"]),
    ("split-seed", lambda: data_mod.stratified_split(_Y, 0.25, -1), ValueError,
     ["Parameter seed", "-1"]),
    ("batches-size-0", lambda: list(data_mod.iterate_batches(_X, _Y, 0)), ValueError,
     ["Parameter batch_size", "0"]),
    ("batches-size-float", lambda: list(data_mod.iterate_batches(_X, _Y, 2.5)), TypeError,
     ["Parameter batch_size", "2.5"]),
    ("batches-mismatch", lambda: list(data_mod.iterate_batches(_X, _Y[:5], 4)), ValueError,
     ["x and y", "20", "5"]),
    ("batches-x-None", lambda: list(data_mod.iterate_batches(None, _Y, 4)), TypeError,
     ["Parameter x", "NoneType"]),
    ("batches-shuffle", lambda: list(data_mod.iterate_batches(_X, _Y, 4, shuffle="yes")),
     TypeError, ["Parameter shuffle", "'yes'"]),
    ("batches-drop_last", lambda: list(data_mod.iterate_batches(_X, _Y, 4, drop_last="no")),
     TypeError, ["Parameter drop_last", "'no'"]),
    ("batches-seed", lambda: list(data_mod.iterate_batches(_X, _Y, 4, seed=-1)), ValueError,
     ["Parameter seed", "-1"]),
    ("shift-negative", lambda: data_mod.random_shift(_X, -1, np.random.default_rng(0)),
     ValueError, ["Parameter max_shift", "-1"]),
    ("shift-float", lambda: data_mod.random_shift(_X, 1.5, np.random.default_rng(0)),
     TypeError, ["Parameter max_shift", "1.5"]),
    ("shift-3d", lambda: data_mod.random_shift(_X[..., 0], 1, np.random.default_rng(0)),
     ValueError, ["Parameter x", "(20, 8, 8)"]),
    ("shift-x-None", lambda: data_mod.random_shift(None, 1, np.random.default_rng(0)),
     TypeError, ["Parameter x"]),
    ("shift-rng-int", lambda: data_mod.random_shift(_X, 1, 3), TypeError,
     ["Parameter rng", "3"]),
    ("download-unknown", lambda: data_files.download("imagenet", "/nonexistent"), ValueError,
     ["Parameter name", "'imagenet'"]),
]


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_data_loader_refuses(call, exc, words):
    expect(call, exc, *words)


def test_data_files_refuse_missing_truncated_and_misshaped_files(tmp_path):
    (tmp_path / "junk.idx").write_bytes(b"\x00\x00\x08\x03\x00")
    (tmp_path / "short.idx").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x10abc")
    (tmp_path / "batch.bin").write_bytes(b"\x00" * 100)
    expect(lambda: data_files.read_idx(tmp_path / "nope"), ValueError, str(tmp_path / "nope"))
    expect(lambda: data_files.read_idx(tmp_path / "junk.idx"), ValueError, "junk.idx",
           "truncated")
    expect(lambda: data_files.read_idx(tmp_path / "short.idx"), ValueError, "short.idx",
           "3 data bytes", "(16,)")
    expect(lambda: data_files.read_idx(tmp_path), ValueError, str(tmp_path))
    expect(lambda: data_files.read_cifar10_batch(tmp_path / "batch.bin"), ValueError,
           "batch.bin", "100 bytes", "3073")
    expect(lambda: data_files.write_cifar10_batch(tmp_path / "o.bin", np.zeros((2, 32, 32)),
                                                  np.zeros(2, int)),
           ValueError, "Parameter images", "(2, 32, 32)")
    expect(lambda: data_files.write_cifar10_batch(
        tmp_path / "o.bin", np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 300])),
        ValueError, "Parameter labels", "0..9")
    expect(lambda: data_files.read_image_folder(tmp_path / "nope"), ValueError,
           str(tmp_path / "nope"), "does not exist")
    expect(lambda: data_files.read_image_folder(tmp_path), ValueError, "no class sub-folders")
    expect(lambda: data_files.load_mnist(tmp_path), ValueError, "train-images-idx3-ubyte")
    expect(lambda: data_files.load_cifar10(tmp_path), ValueError, "data_batch_1.bin")


# =========================================================================== optimisers


def _params():
    return {"w": np.zeros(3)}


OPTIM_CASES = [  # (id, call, exception, words)
    *[(f"AdamW-{k}={v!r}", (lambda k=k, v=v: ssm_ref.optim.AdamW(_params(), **{k: v})), exc,
       [f"Parameter {k}", *words])
      for k, v, exc, words in (
          ("lr", 0, ValueError, ["0"]), ("lr", math.nan, ValueError, ["nan"]),
          ("lr", "1", TypeError, ["'1'"]), ("betas", 0.9, ValueError, ["0.9", "pair"]),
          ("betas", (0.9,), ValueError, ["pair"]), ("eps", 0, ValueError, ["0"]),
          ("eps", math.inf, ValueError, ["inf"]), ("weight_decay", -1, ValueError, ["-1"]),
          ("weight_decay", math.nan, ValueError, ["nan"]),
          ("no_weight_decay", ["x"], ValueError, ["'x'"]))],
    ("AdamW-betas=(1, 1)", lambda: ssm_ref.optim.AdamW(_params(), betas=(1, 1)), ValueError,
     ["Parameter betas[0]", "1", "[0, 1)"]),
    ("AdamW-betas-nan", lambda: ssm_ref.optim.AdamW(_params(), betas=(0.9, math.nan)),
     ValueError, ["Parameter betas[1]", "nan"]),
    *[(f"AdamW-params={p!r}", (lambda p=p: ssm_ref.optim.AdamW(p)), TypeError,
       ["Parameter params"]) for p in ({}, None, [np.zeros(3)])],
    *[(f"SGD-{k}={v!r}", (lambda k=k, v=v: ssm_ref.optim.SGD(_params(), **{k: v})), exc,
       [f"Parameter {k}", repr(v)])
      for k, v, exc in (("momentum", 1.0, ValueError), ("momentum", -0.1, ValueError),
                        ("momentum", math.nan, ValueError), ("nesterov", "yes", TypeError))],
    *[(f"cosine_lr-{k}={v!r}", (lambda k=k, v=v: ssm_ref.optim.cosine_lr(
        **{"step": 0, "total_steps": 10, "base_lr": 1.0, k: v})), exc, [f"Parameter {k}", repr(v)])
      for k, v, exc in (("step", -1, ValueError), ("step", 1.5, TypeError),
                        ("total_steps", 0, ValueError), ("base_lr", math.inf, ValueError),
                        ("warmup_steps", -1, ValueError), ("warmup_steps", 1.5, TypeError),
                        ("min_lr", 2.0, ValueError), ("min_lr", math.nan, ValueError))],
    *[(f"clip-{k}={v!r}", (lambda k=k, v=v: ssm_ref.optim.clip_grad_norm(
        **{"grads": {"w": np.ones(3)}, "max_norm": 1.0, k: v})), exc, words)
      for k, v, exc, words in (
          ("max_norm", 0, ValueError, ["Parameter max_norm", "0"]),
          ("max_norm", math.nan, ValueError, ["Parameter max_norm", "nan"]),
          ("grads", None, TypeError, ["Parameter grads", "NoneType"]),
          ("grads", [1], TypeError, ["Parameter grads", "list"]),
          ("grads", {"w": np.full(3, np.nan)}, ValueError, ["gradient norm", "nan"]))],
    ("global_norm-None", lambda: ssm_ref.optim.global_norm(None), TypeError,
     ["Parameter arrays"]),
    *[(f"cross_entropy-{i}", (lambda kw=kw: ssm_ref.optim.softmax_cross_entropy(
        **{"logits": np.ones((2, 3)), "labels": np.array([0, 2]), **kw})), exc, words)
      for i, (kw, exc, words) in enumerate((
          ({"logits": np.ones(3)}, ValueError, ["Parameter logits", "(3,)"]),
          ({"labels": np.array([0, 5])}, ValueError, ["Parameter labels", "5"]),
          ({"labels": np.array([0, -1])}, ValueError, ["Parameter labels", "-1"]),
          ({"labels": np.array([0.5, 1.0])}, TypeError, ["Parameter labels", "float64"]),
          ({"labels": np.array([0])}, ValueError, ["Parameter labels", "(1,)", "(2,)"]),
          ({"logits": np.full((2, 3), np.nan)}, ValueError, ["Parameter logits", "non-finite"]),
          ({"logits": None}, TypeError, ["Parameter logits"]),
          ({"labels": None}, TypeError, ["Parameter labels"]),
          ({"logits": np.ones((0, 3)), "labels": np.array([], int)}, ValueError,
           ["Parameter logits", "(0, 3)"])))],
]


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in OPTIM_CASES],
                         ids=[c[0] for c in OPTIM_CASES])
def test_optimizer_refuses(call, exc, words):
    expect(call, exc, *words)


@pytest.mark.parametrize("opt_cls", [ssm_ref.optim.AdamW, ssm_ref.optim.SGD])
@pytest.mark.parametrize("grads, exc, words", [
    ({"w": np.ones(4)}, ValueError, ["'w'", "(4,)", "(3,)"]),
    ({"w": np.full(3, np.nan)}, ValueError, ["grads['w']", "non-finite"]),
    ({"v": np.ones(3)}, ValueError, ["Parameter grads", "['w']", "['v']"]),
    ({"w": None}, TypeError, ["'w'", "NoneType"]),
    ({"w": "abc"}, TypeError, ["'w'", "str"]),
    ({"w": np.ones(3) + 1j}, TypeError, ["'w'", "complex128"]),
    (None, TypeError, ["Parameter grads", "NoneType"]),
], ids=["shape", "nan", "keys", "None-value", "str-value", "complex", "None"])
def test_optimizer_step_refuses_bad_gradients_and_leaves_the_parameter(opt_cls, grads, exc,
                                                                       words):
    params = _params()
    opt = opt_cls(params, lr=0.1)
    expect(lambda: opt.step(grads), exc, *words)
    assert np.array_equal(params["w"], np.zeros(3)) and opt.t == 0


# =========================================================================== train()

TRAIN_CASES = [  # (keyword, value, exception, words)
    ("epochs", 0, ValueError, ["Parameter epochs", "0"]),
    ("epochs", 1.5, TypeError, ["Parameter epochs", "1.5"]),
    ("batch_size", 0, ValueError, ["Parameter batch_size", "0"]),
    ("lr", math.nan, ValueError, ["Parameter lr", "nan"]),
    ("lr", -1, ValueError, ["Parameter lr", "-1"]),
    ("weight_decay", math.inf, ValueError, ["Parameter weight_decay", "inf"]),
    ("weight_decay", math.nan, ValueError, ["Parameter weight_decay", "nan"]),
    ("seed", -1, ValueError, ["Parameter seed", "-1"]),
    ("optimizer", "adam", ValueError, ["Parameter optimizer", "'adam'"]),
    ("schedule", "step", ValueError, ["Parameter schedule", "'step'"]),
    ("augment", "rotate", ValueError, ["Parameter augment", "'rotate'"]),
    ("clip_norm", 0, ValueError, ["Parameter clip_norm", "0"]),
    ("clip_norm", math.nan, ValueError, ["Parameter clip_norm", "nan"]),
    ("eval_batch_size", 0, ValueError, ["Parameter eval_batch_size", "0"]),
    ("min_lr", 1.0, ValueError, ["Parameter min_lr", "1.0"]),
    ("min_lr", math.nan, ValueError, ["Parameter min_lr", "nan"]),
    ("dataset", 3, TypeError, ["Parameter dataset", "int"]),
    ("dataset", "imagenet", ValueError, ["'imagenet'"]),
]


@pytest.mark.parametrize("key, value, exc, words", TRAIN_CASES,
                         ids=[f"{c[0]}={c[1]!r}" for c in TRAIN_CASES])
def test_train_refuses(key, value, exc, words):
    expect(lambda: _train(**{key: value}), exc, *words)


def test_train_refuses_a_model_without_the_interface_and_labels_beyond_its_classes():
    expect(lambda: ssm_ref.train.train(object(), _tiny_data(), epochs=1, progress=False),
           TypeError, "Parameter model", "object")
    model = vision.build_model("cnn", img_size=(8, 8), in_chans=1, n_classes=3)
    expect(lambda: ssm_ref.train.train(model, _tiny_data(), epochs=1, progress=False),
           ValueError, "y_train", "3 classes")
    xtr, ytr, xte, yte = _tiny_data()
    expect(lambda: _train(dataset=(xtr, ytr[:5], xte, yte)), ValueError, "x_train", "20", "5")
    expect(lambda: _train(dataset=(xtr, ytr.astype(float), xte, yte)), ValueError, "y_train",
           "float64")


@pytest.mark.parametrize("name", ["metrics.json", "curves.png", "checkpoint.npz"])
def test_stale_temporaries_of_a_run_are_removed_at_its_start(tmp_path, name):
    """A run killed while writing leaves ``NAME.tmp``; the next run removes it before its
    first training step (not only when it next writes that file), and writes the file."""
    from test_train import TinyMLP

    stale = tmp_path / (name + ".tmp")
    stale.write_bytes(b"half a file")
    seen = []

    class Watched(TinyMLP):
        def forward(self, x, return_cache=False):
            seen.append(stale.exists())
            return super().forward(x, return_cache)

    ssm_ref.train.train(Watched(seed=0), _tiny_data(), epochs=1, progress=False,
                        out_dir=tmp_path, plot=True)
    assert seen and seen[0] is False  # gone before the first step
    assert not stale.exists() and (tmp_path / name).is_file()
    other = tmp_path / "notes.txt.tmp"  # not a file of the run: left alone
    other.write_text("keep")
    _train(out_dir=tmp_path, plot=False)
    assert other.read_text() == "keep"


def test_stale_temporary_removed_even_when_the_run_writes_no_plot(tmp_path):
    stale = tmp_path / "curves.png.tmp"
    stale.write_bytes(b"x")
    _train(out_dir=tmp_path, plot=False)
    assert not stale.exists() and not (tmp_path / "curves.png").exists()


# =========================================================================== the command line
# Every user error: one line on stderr, "ssm-ref <command>: error: ...", naming the flag or the
# file, and exit status 2 (the model builder is TinyMLP here, as in test_cli).



@pytest.fixture
def built(monkeypatch):
    """The model builder patched to make a TinyMLP of the data's shape (as test_cli does)."""
    from test_train import TinyConfig, TinyMLP

    def fake_build(name, *, seed, img_size, in_chans, n_classes, **rest):
        return TinyMLP(TinyConfig((*img_size, in_chans), 16, n_classes), seed=seed)
    monkeypatch.setattr(cli, "_build_model", fake_build)


CLI_CASES = [  # (argv, words of the one line)
    (["train", "--warmup-epochs", "inf"], ["--warmup-epochs", "inf"]),
    (["train", "--warmup-epochs", "nan"], ["--warmup-epochs", "nan"]),
    (["train", "--warmup-epochs", "-1"], ["--warmup-epochs"]),
    (["train", "--clip-norm", "nan"], ["--clip-norm", "nan"]),
    (["train", "--lr", "inf"], ["--lr", "inf"]),
    (["train", "--lr", "0"], ["--lr"]),
    (["train", "--lr", "abc"], ["--lr", "'abc'"]),
    (["train", "--weight-decay", "-1"], ["--weight-decay"]),
    (["train", "--epochs", "-1"], ["--epochs", "-1"]),
    (["train", "--batch-size", "1.5"], ["--batch-size", "'1.5'"]),
    (["train", "--seed", "-1"], ["--seed", "-1"]),
    (["train", "--patch-size", "0"], ["--patch-size"]),
    (["train", "--augment", "rotate"], ["--augment", "'rotate'"]),
    (["train", "--data-opt", "test_fraction=2"], ["test_fraction", "2"]),
    (["train", "--data-opt", "dtype=banana"], ["dtype", "banana"]),
    (["train", "--model-opt", "=3"], ["--model-opt"]),
    (["train", "--dataset", "mnist", "--data-root", "/nonexistent/mnist"],
     ["/nonexistent/mnist"]),
    (["predict"], ["required"]),
    (["predict", "img.png", "--model", "resnet", "--checkpoint", "x.pth"], ["--model",
                                                                            "'resnet'"]),
    (["predict", "img.png", "--model", "vim_tiny", "--checkpoint", "/nonexistent/x.pth"],
     ["--checkpoint", "/nonexistent/x.pth"]),
    (["predict", "img.png", "--model", "vim_tiny", "--checkpoint", "x.pth", "--top", "0"],
     ["--top", "0"]),
    (["bench", "--suite", "nope"], ["--suite", "'nope'"]),
]


def _one_line_error(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(err) == 1, err
    assert err[0].startswith(f"ssm-ref {argv[0]}") and "error:" in err[0], err
    return err[0]


@pytest.mark.parametrize("argv, words", CLI_CASES, ids=[" ".join(c[0])[:50] for c in CLI_CASES])
def test_cli_bad_flag_is_one_line_and_status_2(built, argv, words, capsys, tmp_path,
                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "run"), "--no-progress", "--epochs", "1"] \
            if "--epochs" not in argv else argv + ["--out", str(tmp_path / "run")]
    line = _one_line_error(argv, capsys)
    for w in words:
        assert w in line, line


def test_cli_resume_from_a_bad_checkpoint_is_one_line(built, tmp_path, capsys):
    """Truncated, not a zip, a negative epoch, betas = (1, 1): one line naming the file."""
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--no-plot", "--out",
                     str(run)]) == 0
    capsys.readouterr()
    good = (run / "checkpoint.npz").read_bytes()
    with np.load(run / "checkpoint.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    bad = {
        "truncated": good[: len(good) // 2],
        "not-a-zip": b"not a zip file",
    }
    for key, value in (("epoch", np.array(-1)), ("optim/betas", np.array([1.0, 1.0])),
                       ("optim/t", np.array(-1))):
        path = tmp_path / f"{key.replace('/', '_')}.npz"
        np.savez(path, **{**arrays, key: value})
        bad[key] = path.read_bytes()
    for what, raw in bad.items():
        path = tmp_path / f"bad-{what.replace('/', '_')}.npz"
        path.write_bytes(raw)
        line = _one_line_error(["train", "--epochs", "2", "--no-progress", "--out",
                                str(tmp_path / "run2"), "--resume", str(path)], capsys)
        assert str(path) in line, (what, line)


def test_cli_out_naming_a_file_is_one_line(built, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep")
    line = _one_line_error(["train", "--epochs", "1", "--no-progress", "--out", str(existing)],
                           capsys)
    assert "--out" in line and str(existing) in line and existing.read_text() == "keep"


def test_resume_with_another_batch_size_names_the_setting(tmp_path):
    _train(out_dir=tmp_path, plot=False, batch_size=8)
    expect(lambda: _train(out_dir=tmp_path / "b", plot=False, batch_size=4, epochs=2,
                          resume=tmp_path / "checkpoint.npz"),
           ValueError, "batch_size = 8", "batch_size = 4")
