"""The interface every tiny classifier shares, its entry-point checks and its pooled head.

Glossary
--------
B        batch size
H, W     image height and width (pixels); C the image channels
p        patch size; h = H / p, w = W / p the token grid; L = h·w tokens
E        embedding width (``embed_dim``, the blocks' ``d_model``)
K        number of classes (``n_classes``)
logits   (B, K) class scores before the softmax

Every model is a :class:`ssm_ref.module.Module` with this interface (the
training loop of ``ssm_ref.train`` relies on exactly this)::

    model.params                         live view name -> array, official-style dotted names
    model.forward(x, return_cache=False) x (B, H, W, C) -> logits (B, K) [, cache]
    model.backward(dlogits, cache)       -> grads, a dict with exactly the keys of params
    model.backward(dlogits, cache, return_input_grad=True) -> (dx (B, H, W, C), grads)
    model.forward_features(x, return_cache=False) -> backbone output (B, h, w, E) [, cache]
    model.backward_features(dfeat, cache)         -> (dx, grads)   (receptive fields)
    model.state_dict() / model.load_state_dict(sd)     copies; np.savez-friendly
    model.n_params(), model.no_weight_decay(), model.config (a dataclass)
    model.set_backend(scan_fn, scan_backward_fn)       swap the selective scan everywhere
    model.to(xp)                                       move params to numpy or cupy

A model's parameters are its own (head, final norm, embeddings) and its
blocks' under their prefixes (``layers.0.mixer.A_log``): the blocks compute
with the arrays ``params`` returns, so an optimiser may update them in place
or assign new ones.  The images are validated once, in :meth:`Classifier.forward`
(and ``backward``, ``forward_features``, ``backward_features``); the blocks
and layers inside run their unchecked paths.  Computation is float64; logits
come back in the input's dtype, gradients in their parameter's dtype.

On a GPU: ``model.to(cupy)`` moves the parameters, and a forward/backward on
CuPy images then runs entirely on the device (every layer looks up its array
module from its inputs, see ``ssm_ref._xp``); pair it with
``set_backend`` and the ``"cuda"`` scan of :mod:`fast`.

Book chapter: "Vision Mamba blocks" (label ``vision-blocks``).
"""
from __future__ import annotations

import numpy as np

from .._validation import as_array, check_finite, check_nonempty, check_shape
from .._xp import array_module
from ..module import Module, resolve_config, rng_from
from ..nn import linear, linear_backward
from .configs import BaseConfig
from .patch_embed import PatchEmbed
from .prenorm import norm_functions

__all__: list[str] = []  # the base of the models; they are exported by their own modules


def normal_init(rng, std, shape):
    """``trunc_normal_(std=std)`` of timm: its cut at ±2 (absolute) is never reached at std 0.02."""
    return std * rng.standard_normal(shape)


class Classifier(Module):
    """What every tiny classifier shares: the public interface, its checks, the pooled head."""

    config_cls = BaseConfig
    #: Whether the image size is fixed by a position embedding.
    fixed_size = True

    def __init__(self, config=None, *, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None, **overrides):
        super().__init__()
        self.config = resolve_config(self.config_cls, config, overrides)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"Parameter dtype = {self.dtype} must be a floating-point dtype")
        self._build(rng_from(seed))
        self._cast(self.dtype)
        self.set_backend(scan_fn, scan_backward_fn)

    # ------------------------------------------------------------------ checks
    def _check_images(self, x):
        c = self.config
        x = as_array(x, "x", allow_complex=False, ndim=4)
        if self.fixed_size:
            check_shape(x, "x", (None, c.img_size[0], c.img_size[1], c.in_chans))
        else:
            check_shape(x, "x", (None, None, None, c.in_chans))
            if x.shape[1] % c.patch_size or x.shape[2] % c.patch_size:
                raise ValueError(f"Parameter x has shape {x.shape} (B, H, W, C): H and W must "
                                 f"be multiples of patch_size = {c.patch_size}")
        check_nonempty(x, "x")
        check_finite(x, "x")
        return x

    @staticmethod
    def _check_cache(cache):
        if not isinstance(cache, dict) or "logits" not in cache:
            raise TypeError("Parameter cache must be the dict from forward(x, return_cache=True)")
        return cache

    # ------------------------------------------------------------------ public interface
    def __repr__(self):
        return f"{type(self).__name__}({self.config}, params={self.n_params()})"

    def forward(self, x, return_cache=False):
        """Classify images.

        Parameters
        ----------
        x : array_like, shape (B, H, W, C)
            Images, channels last.
        return_cache : bool, default False
            Also return what :meth:`backward` needs.

        Returns
        -------
        logits : ndarray, shape (B, n_classes), in ``x``'s dtype
        cache : dict, only with ``return_cache=True``

        Raises
        ------
        ValueError
            ``x`` not (B, H, W, C) with the configured size and channels, or not finite.
        """
        x = self._check_images(x)
        logits, feat, cache = self._forward(x.astype(self.compute_dtype, copy=False))
        cache.update(x_dtype=x.dtype, logits=logits, feat_shape=feat.shape)
        logits = logits.astype(x.dtype)
        return (logits, cache) if return_cache else logits

    def backward(self, dlogits, cache, return_input_grad=False):
        """Gradients of every parameter (and optionally of the images), hand-derived.

        Parameters
        ----------
        dlogits : array_like, shape (B, n_classes)
            Gradient of the loss with respect to the logits.
        cache : dict
            From ``forward(x, return_cache=True)`` with the current parameters.
        return_input_grad : bool, default False
            Also return the gradient with respect to the images (adversarial
            attacks, saliency).

        Returns
        -------
        grads : dict of str -> ndarray
            Exactly the keys of :attr:`params`, each in its parameter's shape and dtype.
        dx : ndarray, shape (B, H, W, C)
            Only with ``return_input_grad=True``, returned first: ``(dx, grads)``.

        Raises
        ------
        ValueError
            ``dlogits`` of the wrong shape or not finite.
        """
        cache = self._check_cache(cache)
        d = as_array(dlogits, "dlogits", allow_complex=False, ndim=2)
        check_shape(d, "dlogits", cache["logits"].shape)
        check_finite(d, "dlogits")
        dx, grads = self._backward(d.astype(self.compute_dtype, copy=False), None, cache)
        grads = self._grads_out(grads)
        return (dx.astype(cache["x_dtype"]), grads) if return_input_grad else grads

    def forward_features(self, x, return_cache=False):
        """The backbone's output on the token grid: the last block's, before the final norm.

        This is what VMamba's and RepLKNet's receptive-field code differentiates
        (``forward_backbone`` / ``forward_features``).  Taking it before the
        final LayerNorm matters: the channel sum of a LayerNorm output with
        unit weight and zero bias is constant, so its gradient would vanish.

        Returns
        -------
        feat : ndarray, shape (B, h, w, E), in ``x``'s dtype
            For :class:`TinyVim` the patch tokens of the residual stream put back
            on the grid (the class token left out).
        cache : dict, only with ``return_cache=True`` (for :meth:`backward_features`).
        """
        x = self._check_images(x)
        logits, feat, cache = self._forward(x.astype(self.compute_dtype, copy=False))
        cache.update(x_dtype=x.dtype, logits=logits, feat_shape=feat.shape)
        feat = feat.astype(x.dtype)
        return (feat, cache) if return_cache else feat

    def backward_features(self, dfeat, cache):
        """Gradients through :meth:`forward_features`: ``(dx (B, H, W, C), grads)``."""
        cache = self._check_cache(cache)
        d = as_array(dfeat, "dfeat", allow_complex=False, ndim=4)
        check_shape(d, "dfeat", cache["feat_shape"])
        check_finite(d, "dfeat")
        dx, grads = self._backward(None, d.astype(self.compute_dtype, copy=False), cache)
        return dx.astype(cache["x_dtype"]), self._grads_out(grads)

    def _grads_out(self, grads):
        own = dict(self.named_parameters())
        if set(grads) != set(own):
            missing = sorted(set(own) - set(grads))
            extra = sorted(set(grads) - set(own))
            raise RuntimeError(f"internal: gradient keys differ (missing {missing}, extra {extra})")
        return {k: grads[k].astype(v.dtype, copy=False) for k, v in own.items()}

    def no_weight_decay(self):
        """Names excluded from weight decay, as the official code does.

        ``A_log``/``D`` of every scan (Mamba's ``_no_weight_decay``; Vim's
        ``A_b_log``/``D_b``; VMamba's ``A_logs``/``Ds``), the position embedding
        and class token (Vim's and timm's ``no_weight_decay``), and every
        1-D parameter (biases and norm weights, the rule of timm's
        ``param_groups_weight_decay`` used by Vim and VMamba).
        """
        special = {"A_log", "A_b_log", "A_logs", "D", "D_b", "Ds", "pos_embed", "cls_token",
                   "direction_Bs"}
        return {k for k, v in self.named_parameters()
                if k.split(".")[-1] in special or v.ndim <= 1}

    # ------------------------------------------------------------------ shared pieces
    def _head_forward(self, pooled):
        return linear(pooled, self._w("head.weight"), self._w("head.bias"), check=False)  # (B, K)

    def _head_backward(self, dlogits, pooled, g):
        dpooled, g["head.weight"], g["head.bias"] = linear_backward(
            dlogits, pooled, self._w("head.weight"), self._w("head.bias"), check=False)  # (B, E)
        return dpooled

    def _cls_head_forward(self, seq, cache):
        """Final RMSNorm (``norm_f.*``) -> the class token -> head; the logits (B, K).

        ``seq`` is (B, L + 1, E) with the class token at ``self.cls_index``; it
        is kept in ``cache["pre_norm"]`` (it is also the models' feature map).
        """
        cache["pre_norm"] = seq
        norm, _ = norm_functions(self.scan_fn, self.scan_backward_fn, "rms")
        normed = norm(seq, self._w("norm_f.weight"), check=False)  # (B, L + 1, E)
        pooled = normed[:, self.cls_index]  # (B, E) the class token
        cache["pooled"] = pooled
        return self._head_forward(pooled)  # (B, K)

    def _cls_head_backward(self, dlogits, cache, g):
        """Adjoint of :meth:`_cls_head_forward` (``dlogits`` may be None).

        Fills the head and ``norm_f.*`` gradients into ``g``; returns d pre_norm.
        """
        seq = cache["pre_norm"]
        xp = array_module(seq)
        dnormed = xp.zeros(seq.shape, seq.dtype)  # (B, L + 1, E)
        if dlogits is not None:
            dnormed[:, self.cls_index] = self._head_backward(dlogits, cache["pooled"], g)
        else:
            g["head.weight"] = xp.zeros(self._params["head.weight"].shape)
            g["head.bias"] = xp.zeros(self._params["head.bias"].shape)
        _, norm_backward = norm_functions(self.scan_fn, self.scan_backward_fn, "rms")
        dseq, g["norm_f.weight"] = norm_backward(dnormed, seq, self._w("norm_f.weight"),
                                                 check=False)
        return dseq

    def _pool_head_forward(self, t, eps, cache):
        """Final LayerNorm (``norm.*``) -> mean over the tokens -> head; the logits (B, K).

        ``t`` is (B, ..., E) with the tokens on the middle axes; it is kept in
        ``cache["pre_norm"]`` (it is also the models' feature map).
        """
        cache["pre_norm"] = t
        norm, _ = norm_functions(self.scan_fn, self.scan_backward_fn, "layer")
        normed = norm(t, self._w("norm.weight"), self._w("norm.bias"), eps, check=False)
        pooled = normed.mean(axis=tuple(range(1, t.ndim - 1)))  # (B, E)
        cache["pooled"] = pooled
        return self._head_forward(pooled)  # (B, K)

    def _pool_head_backward(self, dlogits, dfeat, cache, eps, g):
        """Adjoint of :meth:`_pool_head_forward`, plus ``dfeat`` (either may be None).

        Fills the head and ``norm.*`` gradients into ``g``; returns d pre_norm.
        """
        t = cache["pre_norm"]
        Bsz, E = t.shape[0], t.shape[-1]
        xp = array_module(t)
        dnormed = xp.zeros(t.shape, t.dtype)  # (B, ..., E)
        if dlogits is not None:
            dpooled = self._head_backward(dlogits, cache["pooled"], g)  # (B, E)
            spread = (Bsz,) + (1,) * (t.ndim - 2) + (E,)
            dnormed += dpooled.reshape(spread) / (t.size // (Bsz * E))  # the mean spreads evenly
        else:
            g["head.weight"] = xp.zeros(self._params["head.weight"].shape)
            g["head.bias"] = xp.zeros(self._params["head.bias"].shape)
        _, norm_backward = norm_functions(self.scan_fn, self.scan_backward_fn, "layer")
        dt, g["norm.weight"], g["norm.bias"] = norm_backward(
            dnormed, t, self._w("norm.weight"), self._w("norm.bias"), eps, check=False)
        if dfeat is not None:  # the features are the stream before the final norm
            dt = dt + dfeat.reshape(t.shape)
        return dt

    def _init_head(self, rng):
        c = self.config
        self.add_param("head.weight", normal_init(rng, 0.02, (c.n_classes, c.embed_dim)))  # (K, E)
        self.add_param("head.bias", np.zeros(c.n_classes))

    def _add_params(self, named):
        """Register each ``name -> array`` of ``named``, in its order."""
        for k, v in named.items():
            self.add_param(k, v)

    def _make_patch_embed(self, rng):
        c = self.config
        self.patch_embed = self.add_module(
            "patch_embed", PatchEmbed(c.in_chans, c.embed_dim, c.patch_size, seed=rng))
