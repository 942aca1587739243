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
