"""A Mamba language model in NumPy that reads real pretrained checkpoints.

The stack of ``mamba_ssm.models.mixer_seq_simple.MambaLMHeadModel`` (Gu and
Dao 2023, arXiv:2312.00752) and of Hugging Face transformers'
``MambaForCausalLM``, built from :class:`ssm_ref.MambaBlock`.

Glossary
--------
B         batch size.
L         number of tokens.
V         vocabulary size (rows of the embedding, padded as in the checkpoint).
d_model   token width.
n_layer   number of residual blocks.

The data path (book equation ``eq-mamba-lm``), ids (B, L)::

    h_0     = embedding[ids]                              (B, L, d_model)
    h_{i+1} = h_i + mixer_i(norm_i(h_i))                  i = 0 .. n_layer-1
    logits  = norm_f(h_n) @ lm_head.weight.T              (B, L, V)

The official code writes the same sum as "add, then norm" (``residual =
hidden + residual; hidden = mixer(norm(residual))``); transformers writes it as
above.  ``residual_in_fp32`` keeps the running sum ``h`` in (at least)
float32 when the parameters are in a lower precision.

Checkpoints: :meth:`MambaLM.from_pretrained` reads a directory with
``config.json`` and ``model.safetensors`` (never pickle) in either naming:

============================  ==========================  ===========================
what                          transformers                ``mamba_ssm``
============================  ==========================  ===========================
embedding                     ``backbone.embeddings``     ``backbone.embedding``
width / depth                 ``hidden_size`` /           ``d_model`` / ``n_layer``
                              ``num_hidden_layers``
block sizes                   ``state_size``,             ``ssm_cfg`` (d_state,
                              ``conv_kernel``, ``expand``, d_conv, expand, dt_rank,
                              ``time_step_rank``          bias, conv_bias)
norm                          RMSNorm,                    ``rms_norm`` (LayerNorm
                              ``layer_norm_epsilon``      when False), eps 1e-5
tied head                     ``tie_word_embeddings``     ``tie_embeddings``
============================  ==========================  ===========================
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ._validation import check_positive_int
from .mamba import MambaBlock, MambaConfig
from .module import Module, check_state_dict_keys, resolve_config, rng_from
from .nn import layer_norm, rms_norm, softplus

__all__ = ["MambaLMConfig", "MambaLM"]


@dataclass(frozen=True)
class MambaLMConfig:
    """Sizes of a Mamba language model (what both checkpoint formats describe).

    Attributes
    ----------
    d_model, n_layer, vocab_size : int
        ``vocab_size`` is the number of embedding rows (after the official
        code's padding to ``pad_vocab_size_multiple``).
    d_state, d_conv, expand : int
        Of every block (16, 4, 2).
    dt_rank : int or "auto"
        ``ceil(d_model / 16)`` when "auto".
    bias, conv_bias : bool
        Biases of in_proj/out_proj (False) and of conv1d (True).
    rms_norm : bool
        RMSNorm (True) or LayerNorm.
    norm_eps : float
    residual_in_fp32 : bool
    tie_embeddings : bool
        The head reuses the embedding matrix.
    """

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    bias: bool = False
    conv_bias: bool = True
    rms_norm: bool = True
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand"):
            check_positive_int(getattr(self, name), name)
        if self.dt_rank == "auto":
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        check_positive_int(self.dt_rank, "dt_rank")

    @classmethod
    def from_json(cls, cfg):
        """Read a transformers or a ``mamba_ssm`` ``config.json`` (a dict)."""
        if not isinstance(cfg, dict):
            raise TypeError(f"Parameter cfg is a {type(cfg).__name__}, not a dict from config.json")
        if "hidden_size" in cfg:  # transformers' MambaConfig
            need = ("hidden_size", "num_hidden_layers", "vocab_size")
            missing = [k for k in need if k not in cfg]
            if missing:
                raise ValueError(f"config.json (transformers format) lacks {missing}")
            return cls(d_model=cfg["hidden_size"], n_layer=cfg["num_hidden_layers"],
                       vocab_size=cfg["vocab_size"], d_state=cfg.get("state_size", 16),
                       d_conv=cfg.get("conv_kernel", 4), expand=cfg.get("expand", 2),
                       dt_rank=cfg.get("time_step_rank", "auto"), bias=cfg.get("use_bias", False),
                       conv_bias=cfg.get("use_conv_bias", True), rms_norm=True,
                       norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
                       residual_in_fp32=cfg.get("residual_in_fp32", True),
                       tie_embeddings=cfg.get("tie_word_embeddings", True))
        if "d_model" in cfg:  # mamba_ssm's MambaConfig
            missing = [k for k in ("d_model", "n_layer", "vocab_size") if k not in cfg]
            if missing:
                raise ValueError(f"config.json (mamba_ssm format) lacks {missing}")
            ssm = dict(cfg.get("ssm_cfg") or {})
            if ssm.get("layer", "Mamba1") != "Mamba1":
                raise ValueError(f"config.json: ssm_cfg layer {ssm['layer']!r} is not supported "
                                 "(only Mamba1 blocks)")
            vocab, mult = cfg["vocab_size"], cfg.get("pad_vocab_size_multiple", 8)
            if vocab % mult:
                vocab += mult - vocab % mult  # the official model pads its vocabulary
            return cls(d_model=cfg["d_model"], n_layer=cfg["n_layer"], vocab_size=vocab,
                       d_state=ssm.get("d_state", 16), d_conv=ssm.get("d_conv", 4),
                       expand=ssm.get("expand", 2), dt_rank=ssm.get("dt_rank", "auto"),
                       bias=ssm.get("bias", False), conv_bias=ssm.get("conv_bias", True),
                       rms_norm=cfg.get("rms_norm", True), norm_eps=1e-5,
                       residual_in_fp32=cfg.get("residual_in_fp32", True),
                       tie_embeddings=cfg.get("tie_embeddings", True))
        raise ValueError("config.json is neither transformers' MambaConfig (hidden_size, ...) nor "
                         "mamba_ssm's (d_model, n_layer, ...)")


def _load_safetensors(path):
    try:
        from safetensors.numpy import load_file  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("reading .safetensors needs the safetensors package: "
                          "pip install safetensors (or the 'models' extra)") from exc
    return load_file(str(path))


class _Norm(Module):
    """RMSNorm (``weight``) or LayerNorm (``weight``, ``bias``) over the last axis."""

    def __init__(self, d_model, rms, eps, dtype):
        super().__init__()
        self.rms, self.eps = rms, eps
        self.add_param("weight", np.ones(d_model, dtype=dtype))
        if not rms:
            self.add_param("bias", np.zeros(d_model, dtype=dtype))

    def _apply(self, x):
        if self.rms:
            return rms_norm(x, self._w("weight"), eps=self.eps, check=False)
        return layer_norm(x, self._w("weight"), self._w("bias"), eps=self.eps, check=False)


class _Layer(Module):
    """One residual layer: ``norm`` then the Mamba block ``mixer`` (the official names)."""

    def __init__(self, config, block_config, rng, dtype):
        super().__init__()
        self.norm = self.add_module("norm", _Norm(config.d_model, config.rms_norm,
                                                  config.norm_eps, dtype))
        self.mixer = self.add_module("mixer", MambaBlock(block_config, seed=rng, dtype=dtype))


class MambaLM(Module):
    """Embedding, ``n_layer`` pre-norm residual Mamba blocks, final norm, LM head.

    Parameters
    ----------
    config : MambaLMConfig, optional
        Built from ``**config_fields`` when omitted.
    seed : int, numpy.random.Generator or None
        Seed of a random initialization: the official block initialization
        (:func:`ssm_ref.mamba_init`), N(0, 0.02) embeddings, unit norms.
    dtype : numpy dtype, default float32
        dtype of the parameters (every block computes in float64).
    scan_fn, state_update_fn : callable, optional
        The selective scan and the decoding step (e.g. ``fast``'s backends);
        ``state_update_fn`` has the official in-place signature of
        :func:`ssm_ref.selective_state_update`.

    The state dict uses transformers' names (``backbone.embeddings.weight``,
    ``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.*``,
    ``backbone.norm_f.weight``, ``lm_head.weight`` when the head is not tied);
    :meth:`from_pretrained` and :meth:`from_state_dict` also read the official
    ``mamba_ssm`` names.

    Examples
    --------
    >>> import numpy as np
    >>> lm = MambaLM(MambaLMConfig(d_model=8, n_layer=2, vocab_size=11), seed=0)
    >>> ids = np.array([[1, 2, 3]])
    >>> lm(ids).shape
    (1, 3, 11)
    >>> out = lm.generate(ids, max_new_tokens=4)
    >>> out.shape, bool((out[:, :3] == ids).all())
    ((1, 7), True)
    >>> list(lm.state_dict())[:3]
    ['backbone.embeddings.weight', 'backbone.layers.0.norm.weight', 'backbone.layers.0.mixer.A_log']
    """

    def __init__(self, config=None, *, seed=0, dtype=np.float32, scan_fn=None,
                 state_update_fn=None, **config_fields):
        super().__init__()
        c = self.config = resolve_config(MambaLMConfig, config, config_fields)
        rng = rng_from(seed)
        block = MambaConfig(d_model=c.d_model, d_state=c.d_state, d_conv=c.d_conv,
                            expand=c.expand, dt_rank=c.dt_rank, conv_bias=c.conv_bias, bias=c.bias)
        self.add_param("backbone.embeddings.weight",
                       (0.02 * rng.standard_normal((c.vocab_size, c.d_model))).astype(dtype))
        self.layers = [self.add_module(f"backbone.layers.{i}", _Layer(c, block, rng, dtype))
                       for i in range(c.n_layer)]
        self.norm_f = self.add_module("backbone.norm_f", _Norm(c.d_model, c.rms_norm,
                                                               c.norm_eps, dtype))
        if not c.tie_embeddings:
            self.add_param("lm_head.weight",
                           (0.02 * rng.standard_normal((c.vocab_size, c.d_model))).astype(dtype))
        self.set_backend(scan_fn, None, state_update_fn)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path, *, scan_fn=None, state_update_fn=None):
        """Read ``config.json`` and ``model.safetensors`` from directory ``path``.

        Both the transformers naming (``MambaForCausalLM``) and the official
        ``mamba_ssm`` naming (``MambaLMHeadModel``) are accepted; see the
        module docstring.  ``scan_fn`` / ``state_update_fn`` choose the
        backend (e.g. ``fast.selective_scan`` with ``backend="numba"``).
        """
        path = Path(path)
        for f in ("config.json", "model.safetensors"):
            if not (path / f).is_file():
                raise ValueError(f"checkpoint directory {path} has no {f}; expected config.json "
                                 "and model.safetensors (transformers or mamba_ssm format)")
        with open(path / "config.json") as f:
            config = MambaLMConfig.from_json(json.load(f))
        return cls.from_state_dict(_load_safetensors(path / "model.safetensors"), config,
                                   scan_fn=scan_fn, state_update_fn=state_update_fn)

    @classmethod
    def from_state_dict(cls, state_dict, config, *, scan_fn=None, state_update_fn=None):
        """Build from arrays in either naming; missing, unknown and misshaped keys are named.

        The parameters keep the checkpoint's dtype (that of the embedding).
        """
        check_state_dict_keys(state_dict)
        if not isinstance(config, MambaLMConfig):
            raise TypeError(f"Parameter config is a {type(config).__name__}, not a MambaLMConfig")
        sd = dict(state_dict)
        if "backbone.embedding.weight" in sd:  # mamba_ssm's name
            sd["backbone.embeddings.weight"] = sd.pop("backbone.embedding.weight")
        emb = sd.get("backbone.embeddings.weight")
        if emb is None:
            raise KeyError("state_dict has neither 'backbone.embeddings.weight' (transformers) "
                           "nor 'backbone.embedding.weight' (mamba_ssm)")
        emb = np.asarray(emb)
        if (emb.ndim == 2 and emb.shape[1] == config.d_model
                and emb.shape[0] > config.vocab_size):  # a padded vocabulary
            config = replace(config, vocab_size=emb.shape[0])
        if config.tie_embeddings and "lm_head.weight" in sd:
            if not np.array_equal(np.asarray(sd["lm_head.weight"]), emb):
                raise ValueError("state_dict['lm_head.weight'] differs from the embedding but "
                                 "the config ties them (tie_word_embeddings / tie_embeddings)")
            del sd["lm_head.weight"]
        dtype = emb.dtype if emb.dtype.kind == "f" else np.float32
        model = cls(config, seed=0, dtype=dtype, scan_fn=scan_fn, state_update_fn=state_update_fn)
        model.load_state_dict(sd)
        return model

    # ------------------------------------------------------------------ helpers
    @property
    def embedding(self):
        """The embedding matrix (V, d_model)."""
        return self._params["backbone.embeddings.weight"]

    @property
    def lm_head(self):
        """The head (V, d_model): the embedding itself when tied."""
        return self._params.get("lm_head.weight", self.embedding)

    def _residual_dtype(self):
        dt = self.embedding.dtype
        if self.config.residual_in_fp32 and np.finfo(dt).bits < 32:
            return np.float32
        return dt

    def _check_ids(self, ids, name="input_ids"):
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"Parameter {name} has dtype {arr.dtype} but integer token ids "
                            "were expected")
        if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
            raise ValueError(f"Parameter {name} has shape {arr.shape} but should be (B, L) "
                             "with B, L >= 1")
        if arr.min() < 0 or arr.max() >= self.config.vocab_size:
            raise ValueError(f"Parameter {name} holds ids in [{arr.min()}, {arr.max()}] but the "
                             f"vocabulary is [0, {self.config.vocab_size - 1}]")
        return arr

    def _embed(self, ids):
        return self.embedding[ids].astype(self._residual_dtype())  # (B, L, d_model)

    def _logits(self, h):
        h = self.norm_f._apply(h.astype(np.float64))
        return h @ self.lm_head.T.astype(np.float64)  # (..., V)

    # ------------------------------------------------------------------ forward
    def __call__(self, input_ids):
        """Same as :meth:`forward`."""
        return self.forward(input_ids)

    def forward(self, input_ids):
        """Logits (B, L, V), float64, for ids (B, L) (``eq-mamba-lm``)."""
        h = self._embed(self._check_ids(input_ids))  # (B, L, d_model)
        for layer in self.layers:
            out, _, _ = layer.mixer._forward(layer.norm._apply(h.astype(np.float64)))
            h = h + out.astype(h.dtype)  # pre-norm residual
        return self._logits(h)

    def backward(self, dout, cache):
        """Not provided: MambaLM is for inference (its blocks have their backward passes)."""
        raise TypeError("MambaLM runs inference only (forward, generate, selection); "
                        "train its blocks (ssm_ref.MambaBlock.backward) or the vision models")

    def selection(self, input_ids):
        """What each layer's selection mechanism computes for ``input_ids`` (B, L).

        Returns a list with one dict per layer: ``delta`` (B, D, L), the step
        Δ = softplus(dt_proj(x) + bias) the scan uses; ``B`` and ``C``
        (B, N, L), made from the input by ``x_proj``; ``A`` (D, N) = -exp(A_log);
        ``u`` (B, D, L), the scan's input (after conv1d and SiLU); and ``z``
        (B, D, L), the gate.
        """
        h = self._embed(self._check_ids(input_ids))
        out = []
        for layer in self.layers:
            block = layer.mixer
            y, cache, _ = block._forward(layer.norm._apply(h.astype(np.float64)))
            bias = block._w("dt_proj.bias")[:, None]  # (D, 1)
            out.append({"delta": softplus(cache["delta"] + bias, check=False),
                        "B": cache["Bmat"], "C": cache["Cmat"], "u": cache["x_act"],
                        "z": cache["z"], "A": -np.exp(block._w("A_log"))})
            h = h + y.astype(h.dtype)
        return out

    def generate(self, input_ids, max_new_tokens, temperature=0.0, top_k=None, seed=None):
        """Continue ``input_ids`` (B, L) by ``max_new_tokens`` tokens; returns (B, L + new).

        The prompt is run once (each block's :meth:`~ssm_ref.MambaBlock.prefill`
        gives its convolution and SSM caches), then every new token costs one
        :meth:`~ssm_ref.MambaBlock.step` per layer, independent of the length
        so far.  ``temperature=0`` is greedy (argmax); otherwise the logits
        are divided by ``temperature``, restricted to the ``top_k`` largest
        when given, and sampled with ``np.random.default_rng(seed)``.
        """
        ids = self._check_ids(input_ids)
        max_new_tokens = check_positive_int(max_new_tokens, "max_new_tokens", minimum=0)
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not np.isfinite(temperature) or temperature < 0):
            raise ValueError(f"Parameter temperature = {temperature!r} must be a finite number >= 0")
        if top_k is not None:
            top_k = check_positive_int(top_k, "top_k")
        rng = np.random.default_rng(seed)
        if max_new_tokens == 0:
            return ids.copy()
        h = self._embed(ids)  # (B, L, d_model): the prompt, keeping every block's caches
        caches = []
        for layer in self.layers:
            y, conv, ssm = layer.mixer.prefill(layer.norm._apply(h.astype(np.float64)))
            caches.append((conv, ssm))
            h = h + y.astype(h.dtype)
        logits = self._logits(h[:, -1])  # (B, V)
        out = [ids]
        for step in range(max_new_tokens):
            nxt = self._sample(logits, temperature, top_k, rng)  # (B,)
            out.append(nxt[:, None])
            if step == max_new_tokens - 1:
                break
            h = self._embed(nxt)  # (B, d_model)
            for i, layer in enumerate(self.layers):
                y, conv, ssm = layer.mixer.step(layer.norm._apply(h.astype(np.float64)),
                                                *caches[i])
                caches[i] = (conv, ssm)
                h = h + y.astype(h.dtype)
            logits = self._logits(h)
        return np.concatenate(out, axis=1)

    @staticmethod
    def _sample(logits, temperature, top_k, rng):
        if temperature == 0:
            return np.argmax(logits, axis=-1)
        z = logits / temperature
        if top_k is not None and top_k < z.shape[-1]:
            kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return np.array([rng.choice(p.shape[-1], p=row) for row in p])
