"""What the official full vision models share: images in, features, logits, a trace.

:class:`~ssm_ref.vision.VisionMamba` and :class:`~ssm_ref.vision.VSSM` each
implement two unchecked methods, ``_check_images(images) -> x`` (the public
input check) and ``_run(x, trace=None, ...) -> features`` (the forward on
float64 images, recording intermediates into ``trace`` when given); this base
turns them into the public ``forward_features``, ``forward`` and ``trace``,
with the linear classifier ``head`` on the features.
"""
from __future__ import annotations


from ..module import Module
from ..nn import linear

__all__: list[str] = []


class FullModel(Module):
    """Base of the official full models: ``forward``, ``forward_features``, ``trace``."""

    def _head(self, feat):
        return linear(feat, self._w("head.weight"), self._w("head.bias"), check=False)

    def forward_features(self, images):
        """The features (B, D) that the head reads, in the images' dtype."""
        x = self._check_images(images)
        return self._run(x.astype(self.compute_dtype, copy=False)).astype(x.dtype)

    def forward(self, images):
        """Logits (B, num_classes), in the images' dtype, for images (B, H, W, C).

        Raises
        ------
        ValueError
            ``images`` not of the model's shape (named in the message), or not finite.
        """
        x = self._check_images(images)
        return self._head(self._run(x.astype(self.compute_dtype, copy=False))).astype(x.dtype)

    def trace(self, images):
        """Every intermediate of the forward pass by the official oracle's names (float64),
        plus ``logits``; the subclass's ``_run`` lists them."""
        x = self._check_images(images)
        rec = {}
        rec["logits"] = self._head(self._run(x.astype(self.compute_dtype, copy=False), rec))
        return rec
