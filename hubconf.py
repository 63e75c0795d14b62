"""torch.hub entry points: the released DINO models, as in the reference's hubconf.

    model = torch.hub.load("<owner>/dinossl", "dino_vits16")             # released weights, eval mode
    model = torch.hub.load("<owner>/dinossl", "dino_vitb16_lc")          # + the ImageNet linear head
    model = torch.hub.load(repo_dir, "dino_vits8", source="local", pretrained=False, drop_path_rate=0.1)

Each entry takes ``pretrained`` (True: the released weights; False: random initialisation; or a
path, URL or ``hf-hub:ORG/NAME``) and keyword arguments for the backbone (timm's
``VisionTransformer`` or torchvision's ``ResNet``), and carries ``pretrained_cfg`` for
``timm.data.resolve_data_config``. The code is this repository's ``src/dinossl``.
"""

import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "timm"]

_SOURCE = _Path(__file__).resolve().parent / "src"
if _SOURCE.is_dir() and str(_SOURCE) not in _sys.path:
    _sys.path.insert(0, str(_SOURCE))

from dinossl.hub import (  # noqa: E402  (after the path to this repository's package)
    dino_resnet50,
    dino_resnet50_lc,
    dino_vitb8,
    dino_vitb8_lc,
    dino_vitb16,
    dino_vitb16_lc,
    dino_vits8,
    dino_vits8_lc,
    dino_vits16,
    dino_vits16_lc,
)

__all__ = [
    "dino_resnet50", "dino_resnet50_lc", "dino_vitb16", "dino_vitb16_lc", "dino_vitb8", "dino_vitb8_lc",
    "dino_vits16", "dino_vits16_lc", "dino_vits8", "dino_vits8_lc",
]
