"""The pre-norm residual layer ``x + mixer(norm(x))`` that Vim, VMamba and PlainMamba share.

Glossary
--------
x       the block input: tokens (B, L, C) or an image (B, H, W, C), channels last.
C       channels (``d_model``).
mixer   the sequence or 2-D mixer (:class:`ssm_ref.vision.VimMixer`,
        :class:`ssm_ref.vision.SS2D`, :class:`ssm_ref.vision.PlainMambaMixer`),
        a submodule under the original project's attribute name.
norm    RMSNorm (``weight``) or LayerNorm (``weight``, ``bias``), under the
        original project's name (``norm``, ``ln_1``).

Book chapter: "Vision Mamba blocks" (``eq-vim-block``, ``eq-vss-block``).
"""
from __future__ import annotations

import numpy as np

from .._validation import check_choice, check_positive_scalar
from ..mamba import fused_pair
from ..module import Module
from ..nn import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward

__all__: list[str] = []  # the base of VimBlock, VSSBlock and PlainMambaBlock; not re-exported


def norm_functions(scan_fn, scan_backward_fn, norm):
    """The forward and backward of ``norm`` ("layer" or "rms") to run with these scan functions.

    Scan functions from ``fast.scan_functions("numba")`` carry the Numba
    versions (attributes ``layer_norm`` and ``rms_norm``, from
    ``fast.numba_norms``, with the reference's signatures); any other pair
    gets the reference's :func:`ssm_ref.nn.layer_norm` or
    :func:`ssm_ref.nn.rms_norm` and their backwards.
    """
    reference = ((layer_norm, layer_norm_backward) if norm == "layer"
                 else (rms_norm, rms_norm_backward))
    return fused_pair(scan_fn, scan_backward_fn, norm + "_norm", default=reference)


class PreNormBlock(Module):
    """``x + mixer(norm(x))``: the residual layer of Vim, VMamba and PlainMamba.

    Parameters
    ----------
    mixer : Module
        The mixer; registered under ``mixer_name`` (its state-dict prefix).
    mixer_name : str
        ``"mixer"`` (Vim), ``"self_attention"`` (VMamba), ``"mamba"`` (PlainMamba).
    norm_name : str
        Prefix of the norm's parameters (``"norm"``, ``"ln_1"``).
    norm : {"layer", "rms"}
        LayerNorm (``<norm_name>.weight`` and ``.bias``) or RMSNorm (``.weight``).
    eps : float
        The norm's epsilon.
    x_ndim : int
        3 for tokens (B, L, C), 4 for images (B, H, W, C).
    dtype : numpy dtype
        dtype of the norm's parameters (weight 1, bias 0).
    """

    def __init__(self, mixer, *, mixer_name, norm_name, norm, eps, x_ndim, dtype):
        super().__init__()
        self.norm = check_choice(norm, "norm", ("layer", "rms"))
        self.eps = check_positive_scalar(eps, "eps")
        self.x_ndim, self.norm_name = x_ndim, norm_name
        self.config = mixer.config
        C = mixer.config.d_model
        self.add_param(norm_name + ".weight", np.ones(C, dtype=dtype))
        if norm == "layer":
            self.add_param(norm_name + ".bias", np.zeros(C, dtype=dtype))
        self.mixer_name = mixer_name
        self.add_module(mixer_name, mixer)

    @property
    def _mixer(self):
        return self._modules[self.mixer_name]

    def _forward(self, u):
        """The layer on float64 input, unchecked: ``(out, cache)``."""
        w, b = self._w(self.norm_name + ".weight"), self._w(self.norm_name + ".bias")
        norm, _ = norm_functions(self.scan_fn, self.scan_backward_fn, self.norm)
        if self.norm == "layer":
            normed = norm(u, w, b, self.eps, check=False)
        else:
            normed = norm(u, w, self.eps, check=False)
        h, mixer_cache = self._mixer._forward(normed)
        return u + h, {"u": u, "mixer": mixer_cache}

    def _backward(self, dout, cache):
        """Gradients on float64 ``dout``, unchecked: ``(dx, grads)``."""
        dnormed, g_mixer = self._mixer._backward(dout, cache["mixer"])
        w_name, b_name = self.norm_name + ".weight", self.norm_name + ".bias"
        g = {}
        _, norm_backward = norm_functions(self.scan_fn, self.scan_backward_fn, self.norm)
        if self.norm == "layer":
            dx_norm, g[w_name], g[b_name] = norm_backward(
                dnormed, cache["u"], self._w(w_name), self._w(b_name), self.eps, check=False)
        else:
            dx_norm, g[w_name] = norm_backward(dnormed, cache["u"], self._w(w_name), self.eps,
                                               check=False)
        return dout + dx_norm, self._grads(g, {self.mixer_name: g_mixer})
