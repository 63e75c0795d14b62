"""The data settings a backbone carries for timm's data helpers (``model.pretrained_cfg``).

``timm.data.resolve_data_config(model=model)`` reads them, and ``timm.data.create_transform``
then builds the reference's evaluation transform: bicubic resize of the short side to
``size / crop_pct`` (256 for 224), center crop ``size``, ImageNet mean and std.
"""

from __future__ import annotations

from typing import Any

from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD

EVAL_RESIZE, EVAL_CROP = 256, 224  # the reference's evaluation transform (eval_linear.py, eval_knn.py)


def evaluation_cfg(input_size: int = EVAL_CROP, classifier: str = "head", num_classes: int = 0,
                   first_conv: str = "patch_embed.proj", fixed_input_size: bool = False) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` keys for DINO's evaluation transform at ``input_size`` px."""
    return {
        "input_size": (3, input_size, input_size),
        "interpolation": "bicubic",
        "crop_pct": EVAL_CROP / EVAL_RESIZE,
        "crop_mode": "center",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "num_classes": num_classes,
        "first_conv": first_conv,
        "classifier": classifier,
        "fixed_input_size": fixed_input_size,
        "license": "apache-2.0",
        "paper_ids": "arXiv:2104.14294",
    }
