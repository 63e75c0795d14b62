"""Optional dependencies: imported where a feature needs them, with one clear line naming the
extra to install when they are missing (``pip install 'dinossl[viz]'`` ...)."""

from __future__ import annotations

import importlib
from types import ModuleType

from dinossl.errors import DinoError

EXTRAS = {"matplotlib": "viz", "av": "video", "torch.utils.tensorboard": "tensorboard", "faiss": "faiss", "huggingface_hub": "hf",
          "wandb": "wandb", "mlflow": "mlflow", "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx"}


def require(module: str, feature: str) -> ModuleType:
    """``module`` imported, or a DinoError saying that ``feature`` needs it and which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(module, EXTRAS.get(top, top))
        raise DinoError(f"{feature} needs {top}, which is not installed: pip install 'dinossl[{extra}]'") from exc


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
