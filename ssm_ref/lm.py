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
from .mamba import MambaBlock
from .nn import layer_norm, rms_norm

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


class MambaLM:
    """Embedding, ``n_layer`` pre-norm residual Mamba blocks, final norm, LM head.

    Build it with :meth:`from_pretrained` (a checkpoint directory) or
    :meth:`from_state_dict` (a dict of arrays in either naming).

    Attributes
    ----------
    config : MambaLMConfig
    embedding : ndarray, shape (V, d_model)
    norms : list of (weight, bias or None)
        Each layer's norm; ``norm_f`` the final one.
    layers : list of MambaBlock
    lm_head : ndarray, shape (V, d_model)
        The embedding itself when the embeddings are tied.

    Examples
    --------
    >>> import numpy as np
    >>> lm = MambaLM.random(MambaLMConfig(d_model=8, n_layer=2, vocab_size=11), seed=0)
    >>> ids = np.array([[1, 2, 3]])
    >>> lm(ids).shape
    (1, 3, 11)
    >>> out = lm.generate(ids, max_new_tokens=4)
    >>> out.shape, bool((out[:, :3] == ids).all())
    ((1, 7), True)
    """

    def __init__(self, config, embedding, layers, norms, norm_f, lm_head=None):
        self.config = config
        self.embedding = embedding
        self.layers = layers
        self.norms = norms
        self.norm_f = norm_f
        self.lm_head = embedding if lm_head is None else lm_head

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(cls, config, seed=0, dtype=np.float32):
        """A model with the official block initialization and N(0, 0.02) embeddings."""
        rng = np.random.default_rng(seed)
        c = config
        emb = (0.02 * rng.standard_normal((c.vocab_size, c.d_model))).astype(dtype)
        layers = [MambaBlock(c.d_model, c.d_state, c.d_conv, c.expand, c.dt_rank,
                             conv_bias=c.conv_bias, bias=c.bias, seed=rng, dtype=dtype)
                  for _ in range(c.n_layer)]
        ones = np.ones(c.d_model, dtype=dtype)
        bias = None if c.rms_norm else np.zeros(c.d_model, dtype=dtype)
        head = None if c.tie_embeddings else emb.copy()
        return cls(c, emb, layers, [(ones.copy(), bias) for _ in layers], (ones.copy(), bias), head)

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
        """Build from arrays under either naming; refuses missing and unknown keys by name."""
        sd = dict(state_dict)
        emb_key = next((k for k in ("backbone.embeddings.weight", "backbone.embedding.weight")
                        if k in sd), None)
        if emb_key is None:
            raise KeyError("state_dict has neither 'backbone.embeddings.weight' (transformers) "
                           "nor 'backbone.embedding.weight' (mamba_ssm)")
        emb = np.asarray(sd.pop(emb_key))
        if emb.shape != (config.vocab_size, config.d_model):
            if emb.ndim == 2 and emb.shape[1] == config.d_model and emb.shape[0] >= config.vocab_size:
                config = replace(config, vocab_size=emb.shape[0])  # padded vocabulary
            else:
                raise ValueError(f"Parameter state_dict[{emb_key!r}] has shape {emb.shape} but "
                                 f"should be ({config.vocab_size}, {config.d_model})")
        norm_bias = not config.rms_norm

        def norm(prefix):
            w = sd.pop(prefix + ".weight", None)
            if w is None:
                raise KeyError(f"state_dict lacks {prefix + '.weight'!r}")
            w = np.asarray(w)
            if w.shape != (config.d_model,):
                raise ValueError(f"Parameter state_dict[{prefix + '.weight'!r}] has shape "
                                 f"{w.shape} but should be ({config.d_model},)")
            b = sd.pop(prefix + ".bias", None) if norm_bias else None
            return w, None if b is None else np.asarray(b)

        layers, norms = [], []
        for i in range(config.n_layer):
            pre = f"backbone.layers.{i}."
            norms.append(norm(pre + "norm"))
            mixer = {k: sd.pop(k) for k in [k for k in sd if k.startswith(pre + "mixer.")]}
            block = MambaBlock.from_state_dict(mixer, prefix=pre + "mixer.", scan_fn=scan_fn,
                                               state_update_fn=state_update_fn)
            bc = block.config
            if (bc.d_model, bc.d_state, bc.d_conv, bc.dt_rank) != (
                    config.d_model, config.d_state, config.d_conv, config.dt_rank):
                raise ValueError(f"layer {i}: weights give d_model={bc.d_model}, "
                                 f"d_state={bc.d_state}, d_conv={bc.d_conv}, dt_rank={bc.dt_rank} "
                                 f"but config.json says {config.d_model}, {config.d_state}, "
                                 f"{config.d_conv}, {config.dt_rank}")
            layers.append(block)
        norm_f = norm("backbone.norm_f")
        head = sd.pop("lm_head.weight", None)
        if head is not None:
            head = np.asarray(head)
            if head.shape != emb.shape:
                raise ValueError(f"Parameter state_dict['lm_head.weight'] has shape {head.shape} "
                                 f"but should be {emb.shape}")
            if config.tie_embeddings and np.array_equal(head, emb):
                head = None
        elif not config.tie_embeddings:
            raise KeyError("state_dict lacks 'lm_head.weight' and the config does not tie "
                           "the embeddings")
        if sd:
            raise KeyError(f"state_dict has unknown keys {sorted(sd)[:8]}"
                           + (" ..." if len(sd) > 8 else ""))
        return cls(config, emb, layers, norms, norm_f, head)

    # ------------------------------------------------------------------ helpers
    @property
    def n_params(self) -> int:
        """Number of scalar parameters (the tied head counted once)."""
        n = self.embedding.size + sum(b.num_params for b in self.layers)
        n += sum(w.size + (0 if b is None else b.size) for w, b in self.norms + [self.norm_f])
        return int(n + (0 if self.lm_head is self.embedding else self.lm_head.size))

    def _norm(self, x, wb):
        w, b = wb
        if self.config.rms_norm:
            return rms_norm(x, w, eps=self.config.norm_eps)
        return layer_norm(x, w, b, eps=self.config.norm_eps)

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

    def _logits(self, h):
        return self._norm(h, self.norm_f).astype(np.float64) @ self.lm_head.T.astype(np.float64)

    # ------------------------------------------------------------------ forward
    def __call__(self, input_ids):
        """Same as :meth:`forward`."""
        return self.forward(input_ids)

    def forward(self, input_ids):
        """Logits (B, L, V), float64, for ids (B, L) (``eq-mamba-lm``)."""
        ids = self._check_ids(input_ids)
        h = self.embedding[ids].astype(self._residual_dtype())  # (B, L, d_model)
        for norm, block in zip(self.norms, self.layers):
            h = h + block(self._norm(h, norm))  # pre-norm residual
        return self._logits(h)

    def selection(self, input_ids):
        """What each layer's selection mechanism computes for ``input_ids`` (B, L).

        Returns a list with one dict per layer: ``delta`` (B, D, L), the step
        Δ = softplus(dt_proj(x) + bias) the scan uses; ``B`` and ``C``
        (B, N, L), made from the input by ``x_proj``; ``A`` (D, N) = -exp(A_log);
        and ``u`` (B, D, L), the scan's input (after conv1d and SiLU).
        """
        from .nn import softplus  # noqa: PLC0415
        ids = self._check_ids(input_ids)
        h = self.embedding[ids].astype(self._residual_dtype())  # (B, L, d_model)
        out = []
        for norm, block in zip(self.norms, self.layers):
            y, cache = block.forward(self._norm(h, norm), return_cache=True)
            bias = block.params["dt_proj.bias"].astype(np.float64)[:, None]  # (D, 1)
            out.append({"delta": softplus(cache["delta"] + bias), "B": cache["Bmat"],
                        "C": cache["Cmat"], "u": cache["x_act"],
                        "A": -np.exp(block.params["A_log"].astype(np.float64))})
            h = h + y
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
        if isinstance(temperature, bool) or not np.isfinite(temperature) or temperature < 0:
            raise ValueError(f"Parameter temperature = {temperature!r} must be a finite number >= 0")
        if top_k is not None:
            top_k = check_positive_int(top_k, "top_k")
        rng = np.random.default_rng(seed)
        out = [ids]
        if max_new_tokens == 0:
            return ids.copy()
        # prompt: full forward, keeping every block's caches
        h = self.embedding[ids].astype(self._residual_dtype())  # (B, L, d_model)
        caches = []
        for norm, block in zip(self.norms, self.layers):
            y, conv, ssm = block.prefill(self._norm(h, norm))
            caches.append((conv, ssm))
            h = h + y
        logits = self._logits(h[:, -1])  # (B, V)
        for step in range(max_new_tokens):
            nxt = self._sample(logits, temperature, top_k, rng)  # (B,)
            out.append(nxt[:, None])
            if step == max_new_tokens - 1:
                break
            h = self.embedding[nxt].astype(self._residual_dtype())  # (B, d_model)
            for i, (norm, block) in enumerate(zip(self.norms, self.layers)):
                y, conv, ssm = block.step(self._norm(h, norm), *caches[i])
                caches[i] = (conv, ssm)
                h = h + y
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
