"""Running a frozen backbone over images: the one harness that evaluations, ``dino attention``,
``dino dedupe`` and the feature commands share (layer between ``train`` and ``eval``).

* :class:`BackboneHarness`: weights, network, device, precision, TF32, batch size, workers,
  progress; ``load()`` -> :class:`LoadedBackbone`; ``identity()`` / ``describe()`` for results.
* :class:`LoadedBackbone`: module + device + autocast dtype; ``cls``, ``outputs`` (CLS, patch
  tokens, attention), ``over`` / ``collect`` (a pass over a DataLoader).
* :mod:`.batches`: datasets of (image, label, index) items and their loader.
"""

from dinossl.inference.batches import (
    ComputedBatch,
    ImageFiles,
    TransformedImages,
    collate_indexed,
    image_loader,
)
from dinossl.inference.harness import BackboneHarness
from dinossl.inference.identity import describe_backbone, file_identity, require_vit, weights_identity, weights_sha256
from dinossl.inference.loaded import LoadedBackbone, backbone_output
from dinossl.inference.outputs import BackboneOutputs, cls_attention, forward_outputs, patch_grid, patch_tokens

__all__ = [
    "BackboneHarness", "BackboneOutputs", "ComputedBatch", "ImageFiles", "LoadedBackbone", "TransformedImages",
    "backbone_output", "cls_attention", "collate_indexed", "describe_backbone", "file_identity", "forward_outputs",
    "image_loader", "patch_grid", "patch_tokens", "require_vit", "weights_identity", "weights_sha256",
]
