"""The baselines the vision-Mamba models are compared with: a tiny ViT and a tiny CNN.

Same interface as the Mamba classifiers (:class:`ssm_ref.vision.classifier.Classifier`);
the attention model's score matrix is (L, L) per head, the CNN sees a k×k
neighbourhood per block: the two ends the survey's Section 5 compares Mamba with.

Glossary
--------
B        batch size
p        patch size; h, w the token grid; L = h·w tokens
E        embedding width (``embed_dim``)
nh, dh   attention heads and their width (E = nh·dh)
k        the CNN's depthwise kernel side

Book chapter: "Small experiments" (label ``experiments``); survey: Rahman et
al. 2024, arXiv:2410.03105, Section 5.
"""
from __future__ import annotations

import numpy as np

from .._xp import array_module
from ..nn import (
    depthwise_conv2d,
    depthwise_conv2d_backward,
    gelu,
    gelu_backward,
    layer_norm,
    layer_norm_backward,
    linear,
    linear_backward,
)
from .classifier import Classifier, normal_init
from .configs import AttentionConfig, CNNConfig
from .patch_embed import add_position_embedding, add_position_embedding_backward

__all__ = ["TinyAttention", "TinyCNN"]


# =========================================================================== attention
def _attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_heads):
    """Multi-head softmax self-attention (timm's ``Attention``) on (B, L, E)."""
    Bsz, L, E = x.shape
    dh = E // n_heads
    qkv = linear(x, w_qkv, b_qkv, check=False)  # (B, L, 3E)
    qkv = qkv.reshape(Bsz, L, 3, n_heads, dh).transpose(2, 0, 3, 1, 4)  # (3, B, nh, L, dh)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, L, dh) each
    scale = dh ** -0.5
    S = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, nh, L, L) the L x L score matrix
    S = S - S.max(axis=-1, keepdims=True)  # stable softmax
    xp = array_module(S)
    P = xp.exp(S)
    P /= P.sum(axis=-1, keepdims=True)  # (B, nh, L, L) attention weights, rows sum to 1
    O = P @ v  # (B, nh, L, dh)
    Oc = O.transpose(0, 2, 1, 3).reshape(Bsz, L, E)  # (B, L, E) heads concatenated
    out = linear(Oc, w_proj, b_proj, check=False)  # (B, L, E)
    return out, {"x": x, "q": q, "k": k, "v": v, "P": P, "Oc": Oc, "scale": scale}


def _attention_backward(dout, cache, w_qkv, b_qkv, w_proj, b_proj):
    """Reverse of :func:`_attention_forward`: dx and the four parameter gradients.

    With ``P = softmax(S)``: ``dS = P * (dP - rowsum(dP * P))``; ``dq = dS k scale``,
    ``dk = dS^T q scale``, ``dv = P^T dO``.
    """
    x, q, k, v, P = cache["x"], cache["q"], cache["k"], cache["v"], cache["P"]
    Bsz, L, E = x.shape
    n_heads, dh = q.shape[1], q.shape[3]
    dOc, dw_proj, db_proj = linear_backward(dout, cache["Oc"], w_proj, b_proj,
                                            check=False)  # (B, L, E)
    dO = dOc.reshape(Bsz, L, n_heads, dh).transpose(0, 2, 1, 3)  # (B, nh, L, dh)
    dP = dO @ v.transpose(0, 1, 3, 2)  # (B, nh, L, L)
    dv = P.transpose(0, 1, 3, 2) @ dO  # (B, nh, L, dh)
    xp = array_module(P)
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))  # softmax backward, row by row
    dq = (dS @ k) * cache["scale"]  # (B, nh, L, dh)
    dk = (dS.transpose(0, 1, 3, 2) @ q) * cache["scale"]
    dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(Bsz, L, 3 * E)  # (B, L, 3E)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, x, w_qkv, b_qkv, check=False)  # (B, L, E)
    return dx, dw_qkv, db_qkv, dw_proj, db_proj


class TinyAttention(Classifier):
    """A tiny Vision Transformer of the same width: the softmax-attention baseline.

    The data path::

        tok    = patch_embed(x) + pos_embed           (B, L, E)
        tok    = tok + Attn(LayerNorm(tok))           multi-head softmax attention, L x L
        tok    = tok + MLP(LayerNorm(tok))            fc1 -> GELU -> fc2
        feat   = LayerNorm(tok; norm)
        logits = head(mean_L feat)

    Parameters
    ----------
    config : AttentionConfig, optional
    seed, dtype
        As :class:`TinyVim`.
    scan_fn, scan_backward_fn
        Accepted for a uniform interface; attention has no scan.
    **overrides
        Fields of :class:`AttentionConfig`.

    Attributes
    ----------
    params : dict
        timm's ViT names: ``patch_embed.proj.*``, ``pos_embed`` (1, L, E),
        ``blocks.{l}.norm1.*``, ``blocks.{l}.attn.qkv.*`` (3E, E),
        ``blocks.{l}.attn.proj.*``, ``blocks.{l}.norm2.*``, ``blocks.{l}.mlp.fc1.*``,
        ``blocks.{l}.mlp.fc2.*``, ``norm.*``, ``head.*``.

    Notes
    -----
    Every token attends to every token: the score matrix is (L, L) per head,
    so time and memory grow as L² where the Mamba models grow as L (the
    survey's Section 5 comparison; measured in the book chapter).  No class
    token (mean pooling, as the Mamba grid models), LayerNorm eps 1e-6 and
    the normal(0.02) init of timm, zero biases.  The backward is hand-derived
    (softmax: ``dS = P (dP - rowsum(P dP))``) and gradient-checked.

    References
    ----------
    Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", arXiv:2010.11929;
    Vaswani et al. 2017, arXiv:1706.03762 (``timm``'s ``VisionTransformer``).

    Examples
    --------
    >>> import numpy as np
    >>> model = TinyAttention(embed_dim=8, n_heads=2)
    >>> model(np.zeros((3, 8, 8, 1))).shape
    (3, 10)
    """

    config_cls = AttentionConfig
    eps = 1e-6

    def _build(self, rng):
        c = self.config
        h, w = c.grid
        E, hidden = c.embed_dim, int(c.mlp_ratio * c.embed_dim)
        self._make_patch_embed(rng)
        self.add_param("pos_embed", normal_init(rng, 0.02, (1, h * w, E)))
        for i in range(c.depth):
            pre = f"blocks.{i}."
            self._add_params({
                pre + "norm1.weight": np.ones(E), pre + "norm1.bias": np.zeros(E),
                pre + "attn.qkv.weight": normal_init(rng, 0.02, (3 * E, E)),
                pre + "attn.qkv.bias": np.zeros(3 * E),
                pre + "attn.proj.weight": normal_init(rng, 0.02, (E, E)),
                pre + "attn.proj.bias": np.zeros(E),
                pre + "norm2.weight": np.ones(E), pre + "norm2.bias": np.zeros(E),
                pre + "mlp.fc1.weight": normal_init(rng, 0.02, (hidden, E)),
                pre + "mlp.fc1.bias": np.zeros(hidden),
                pre + "mlp.fc2.weight": normal_init(rng, 0.02, (E, hidden)),
                pre + "mlp.fc2.bias": np.zeros(E),
            })
        self.add_param("norm.weight", np.ones(E))
        self.add_param("norm.bias", np.zeros(E))
        self._init_head(rng)

    def _forward(self, x):
        c = self.config
        h, w = c.grid
        cache = {"blocks": []}
        tok, cache["patch"] = self.patch_embed._forward(x)  # (B, h, w, E)
        Bsz = tok.shape[0]
        t = add_position_embedding(tok.reshape(Bsz, h * w, c.embed_dim),
                                   self._w("pos_embed"), check=False)  # (B, L, E)
        for i in range(c.depth):
            p = lambda name: self._w(f"blocks.{i}.{name}")  # noqa: E731
            bc = {"t0": t}
            n1 = layer_norm(t, p("norm1.weight"), p("norm1.bias"), self.eps, check=False)
            a, bc["attn"] = _attention_forward(n1, p("attn.qkv.weight"), p("attn.qkv.bias"),
                                               p("attn.proj.weight"), p("attn.proj.bias"),
                                               c.n_heads)
            t = t + a  # (B, L, E)
            bc["t1"] = t
            n2 = layer_norm(t, p("norm2.weight"), p("norm2.bias"), self.eps, check=False)
            bc["n2"] = n2
            hid = linear(n2, p("mlp.fc1.weight"), p("mlp.fc1.bias"), check=False)  # (B, L, hidden)
            bc["hid"] = hid
            act = gelu(hid, check=False)
            bc["act"] = act
            t = t + linear(act, p("mlp.fc2.weight"), p("mlp.fc2.bias"), check=False)  # (B, L, E)
            cache["blocks"].append(bc)
        logits = self._pool_head_forward(t, self.eps, cache)  # (B, K)
        return logits, t.reshape(Bsz, h, w, c.embed_dim), cache

    def _backward(self, dlogits, dfeat, cache):
        c = self.config
        h, w = c.grid
        g = {}
        Bsz, L, E = cache["pre_norm"].shape
        dt = self._pool_head_backward(dlogits, dfeat, cache, self.eps, g)  # (B, L, E)
        for i in reversed(range(c.depth)):
            pre = f"blocks.{i}."
            p = lambda name: self._w(pre + name)  # noqa: E731
            bc = cache["blocks"][i]
            # t2 = t1 + fc2(gelu(fc1(norm2(t1)), check=False))
            dact, g[pre + "mlp.fc2.weight"], g[pre + "mlp.fc2.bias"] = linear_backward(
                dt, bc["act"], p("mlp.fc2.weight"), p("mlp.fc2.bias"), check=False)
            dhid = gelu_backward(dact, bc["hid"], check=False)  # (B, L, hidden)
            dn2, g[pre + "mlp.fc1.weight"], g[pre + "mlp.fc1.bias"] = linear_backward(
                dhid, bc["n2"], p("mlp.fc1.weight"), p("mlp.fc1.bias"), check=False)
            dres, g[pre + "norm2.weight"], g[pre + "norm2.bias"] = layer_norm_backward(
                dn2, bc["t1"], p("norm2.weight"), p("norm2.bias"), self.eps, check=False)
            dt = dt + dres
            # t1 = t0 + attn(norm1(t0))
            dn1, g[pre + "attn.qkv.weight"], g[pre + "attn.qkv.bias"], \
                g[pre + "attn.proj.weight"], g[pre + "attn.proj.bias"] = _attention_backward(
                    dt, bc["attn"], p("attn.qkv.weight"), p("attn.qkv.bias"),
                    p("attn.proj.weight"), p("attn.proj.bias"))
            dres, g[pre + "norm1.weight"], g[pre + "norm1.bias"] = layer_norm_backward(
                dn1, bc["t0"], p("norm1.weight"), p("norm1.bias"), self.eps, check=False)
            dt = dt + dres
        dt, g["pos_embed"] = add_position_embedding_backward(dt)
        dx, gp = self.patch_embed._backward(dt.reshape(Bsz, h, w, E), cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g



# =========================================================================== CNN
class TinyCNN(Classifier):
    """A tiny depthwise-convolution network: the local (CNN) baseline.

    The data path::

        tok    = patch_embed(x)                                   (B, h, w, E)
        tok    = tok + pwconv(GELU(dwconv_kxk(LayerNorm(tok))))   per block
        feat   = LayerNorm(tok; norm)
        logits = head(mean_{h, w} feat)

    Each block sees a k x k neighbourhood, so ``depth`` blocks see a
    ``(depth (k - 1) + 1)``-wide square of tokens: the receptive field grows
    linearly with depth, where one Mamba block already covers the image.

    Parameters
    ----------
    config : CNNConfig, optional
    seed, dtype
    scan_fn, scan_backward_fn
        Accepted for a uniform interface; unused.
    **overrides
        Fields of :class:`CNNConfig`.

    Attributes
    ----------
    params : dict
        ``patch_embed.proj.*``, ``layers.{l}.norm.*``, ``layers.{l}.dwconv.weight``
        (E, 1, k, k), ``layers.{l}.dwconv.bias``, ``layers.{l}.pwconv.*`` (E, E),
        ``norm.*``, ``head.*``.

    Notes
    -----
    A ConvNeXt-style block, much reduced (one pointwise layer, no expansion).
    Initialization: PyTorch's default for the depthwise conv, normal(0.02) for
    the pointwise layer, zero biases.

    References
    ----------
    Liu et al. 2022, "A ConvNet for the 2020s" (ConvNeXt), arXiv:2201.03545.

    Examples
    --------
    >>> import numpy as np
    >>> TinyCNN(embed_dim=8)(np.zeros((1, 8, 8, 1))).shape
    (1, 10)
    """

    config_cls = CNNConfig
    fixed_size = False
    eps = 1e-6

    def _build(self, rng):
        c = self.config
        E, k = c.embed_dim, c.kernel
        self._make_patch_embed(rng)
        for i in range(c.depth):
            pre = f"layers.{i}."
            self._add_params({
                pre + "norm.weight": np.ones(E), pre + "norm.bias": np.zeros(E),
                pre + "dwconv.weight": rng.uniform(-1 / k, 1 / k, (E, 1, k, k)),
                pre + "dwconv.bias": rng.uniform(-1 / k, 1 / k, (E,)),
                pre + "pwconv.weight": normal_init(rng, 0.02, (E, E)),
                pre + "pwconv.bias": np.zeros(E),
            })
        self.add_param("norm.weight", np.ones(E))
        self.add_param("norm.bias", np.zeros(E))
        self._init_head(rng)

    def _forward(self, x):
        c = self.config
        cache = {"blocks": []}
        t, cache["patch"] = self.patch_embed._forward(x)  # (B, h, w, E)
        for i in range(c.depth):
            p = lambda name: self._w(f"layers.{i}.{name}")  # noqa: E731
            bc = {"t0": t}
            n = layer_norm(t, p("norm.weight"), p("norm.bias"), self.eps, check=False)
            bc["n"] = n
            hc = depthwise_conv2d(n, p("dwconv.weight")[:, 0], p("dwconv.bias"),
                                  check=False)  # (B, h, w, E)
            bc["hc"] = hc
            act = gelu(hc, check=False)
            bc["act"] = act
            t = t + linear(act, p("pwconv.weight"), p("pwconv.bias"), check=False)  # (B, h, w, E)
            cache["blocks"].append(bc)
        return self._pool_head_forward(t, self.eps, cache), t, cache

    def _backward(self, dlogits, dfeat, cache):
        c = self.config
        g = {}
        dt = self._pool_head_backward(dlogits, dfeat, cache, self.eps, g)  # (B, h, w, E)
        for i in reversed(range(c.depth)):
            pre = f"layers.{i}."
            p = lambda name: self._w(pre + name)  # noqa: E731
            bc = cache["blocks"][i]
            dact, g[pre + "pwconv.weight"], g[pre + "pwconv.bias"] = linear_backward(
                dt, bc["act"], p("pwconv.weight"), p("pwconv.bias"), check=False)
            dhc = gelu_backward(dact, bc["hc"], check=False)
            dn, dw, g[pre + "dwconv.bias"] = depthwise_conv2d_backward(
                dhc, bc["n"], p("dwconv.weight")[:, 0], p("dwconv.bias"), check=False)
            g[pre + "dwconv.weight"] = dw[:, None]  # (E, 1, k, k)
            dres, g[pre + "norm.weight"], g[pre + "norm.bias"] = layer_norm_backward(
                dn, bc["t0"], p("norm.weight"), p("norm.bias"), self.eps, check=False)
            dt = dt + dres
        dx, gp = self.patch_embed._backward(dt, cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g
