"""The model registry: every tiny classifier by name, and :func:`build_model`.

====================  ======================================================================
``"vim"``             :class:`TinyVim`: patches -> scan order -> middle class token -> position
                      embedding -> Vim blocks -> RMSNorm -> head on the class token
``"vmamba"``          :class:`TinyVMamba`: patches -> VSS blocks (SS2D, cross-scan) on the grid
                      -> LayerNorm -> mean pool -> head
``"localmamba"``      TinyVMamba with LocalMamba's windowed directions
``"efficientvmamba"`` TinyVMamba with EfficientVMamba's atrous (ES2D) directions
``"plainmamba"``      :class:`TinyPlainMamba`: PlainMamba blocks (4 shared-parameter snakes)
``"attention"``       :class:`TinyAttention`: a ViT of the same width (softmax attention, MLP)
``"cnn"``             :class:`TinyCNN`: depthwise 3x3 conv blocks (a local baseline)
====================  ======================================================================

The configurations are in :mod:`ssm_ref.vision.configs`, the shared interface
in :mod:`ssm_ref.vision.classifier`, the models in :mod:`ssm_ref.vision.tiny_mamba`
and :mod:`ssm_ref.vision.baselines`.  A new model is one line in :data:`MODELS`.

Book chapter: "Vision Mamba blocks" (label ``vision-blocks``).
"""
from __future__ import annotations

from .._validation import check_choice
from .baselines import TinyAttention, TinyCNN
from .configs import (  # noqa: F401  (importable from here too)
    AttentionConfig,
    CNNConfig,
    PlainMambaConfig,
    VimConfig,
    VMambaConfig,
)
from .tiny_mamba import TinyPlainMamba, TinyVim, TinyVMamba

__all__ = ["MODELS", "build_model"]


def _vmamba_variant(directions, **defaults):
    def make(**kw):
        kw.setdefault("directions", directions)
        for k, v in defaults.items():
            kw.setdefault(k, v)
        return TinyVMamba(**kw)
    return make


#: Model names accepted by :func:`build_model`, each a constructor taking keyword arguments.
MODELS = {
    "vim": TinyVim,
    "vmamba": TinyVMamba,
    "localmamba": _vmamba_variant("localmamba"),
    "efficientvmamba": _vmamba_variant("es2d"),
    "plainmamba": TinyPlainMamba,
    "attention": TinyAttention,
    "cnn": TinyCNN,
}


def build_model(name, **kwargs):
    """Build a tiny classifier by name.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`: ``"vim"``, ``"vmamba"``, ``"localmamba"``
        (VMamba with LocalMamba's windowed directions), ``"efficientvmamba"``
        (VMamba with the ES2D atrous sub-grids), ``"plainmamba"``,
        ``"attention"``, ``"cnn"``.
    **kwargs
        ``seed``, ``dtype``, ``scan_fn``, ``scan_backward_fn``, ``config`` and
        any configuration field (``embed_dim``, ``depth``, ``scan`` for Vim,
        ``directions`` for the VMamba family, ``img_size``, ...).

    Returns
    -------
    model

    Raises
    ------
    ValueError
        Unknown name.
    TypeError
        A keyword the model's configuration does not have.

    Examples
    --------
    >>> model = build_model("vim", scan="snake", embed_dim=8, d_state=4)
    >>> type(model).__name__, model.config.scan
    ('TinyVim', 'snake')
    >>> build_model("localmamba", embed_dim=8).config.directions
    'localmamba'
    """
    if not isinstance(name, str):
        raise TypeError(f"Parameter name = {name!r} must be a string naming a model")
    check_choice(name, "name", MODELS)
    return MODELS[name](**kwargs)
