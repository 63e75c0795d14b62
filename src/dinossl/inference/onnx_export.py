"""A frozen backbone as an ONNX file that runs without dinossl or PyTorch (onnxruntime).

The graph takes ``images`` (B, 3, H, W), float32, normalised as for the evaluations, and gives
``descriptor`` (B, D): the backbone's global descriptor (ViT: [CLS] after the final norm;
ResNet-50: the average-pooled features). With ``patch_tokens`` a ViT also gives
``patch_tokens`` (B, (H/p) * (W/p), D), the last block's patch tokens, row-major.

The batch is dynamic. So are a ViT's height and width (multiples of the patch size, at least
two patches a side): the position embeddings are resampled inside the graph by the package's
one rule (:func:`~dinossl.models.position_embedding.resample_position_embeddings`). A ResNet's
height and width are dynamic too (at least 32 px). Export goes through ``torch.onnx``'s
``torch.export``-based exporter (extra ``onnx``: onnx, onnxscript; onnxruntime to run it).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dinossl.errors import DinoError
from dinossl.inference.outputs import forward_outputs
from dinossl.optional import require
from dinossl.outputs import usable_output_file
from dinossl.safe_files import write_atomic

OPSET = 18
MAX_SIDE = 8192  # largest height or width the graph accepts (pixels)


class ExportedOutputs(nn.Module):
    """The exported computation: (B, 3, H, W) images -> descriptor (B, D) [, patch tokens (B, N, D)]."""

    def __init__(self, backbone: nn.Module, patch_tokens: bool = False) -> None:
        super().__init__()
        self.backbone, self.patch_tokens = backbone, patch_tokens

    def forward(self, images: torch.Tensor):
        outputs = forward_outputs(self.backbone, images, with_patch_tokens=self.patch_tokens)
        return (outputs.cls, outputs.patch_tokens) if self.patch_tokens else outputs.cls


def output_names(patch_tokens: bool) -> list[str]:
    return ["descriptor", "patch_tokens"] if patch_tokens else ["descriptor"]


def _dynamic_shapes(backbone: nn.Module) -> tuple[dict, tuple[int, int]]:
    """The dynamic dimensions of ``images`` and the example height and width traced with."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    patch = getattr(backbone, "patch_size", None)
    if isinstance(patch, int):
        rows = torch.export.Dim("rows", min=2, max=MAX_SIDE // patch)
        cols = torch.export.Dim("cols", min=2, max=MAX_SIDE // patch)
        return {"images": {0: batch, 2: patch * rows, 3: patch * cols}}, (3 * patch, 4 * patch)
    height = torch.export.Dim("height", min=32, max=MAX_SIDE)
    width = torch.export.Dim("width", min=32, max=MAX_SIDE)
    return {"images": {0: batch, 2: height, 3: width}}, (64, 96)


def export_onnx(backbone: nn.Module, path: str | Path, patch_tokens: bool = False, overwrite: bool = False,
                opset: int = OPSET) -> Path:
    """Write ``backbone`` (float32, CPU, eval mode) as an ONNX file at ``path``, atomically.

    Raises DinoError when ``patch_tokens`` is asked of a backbone without them (ResNet) or
    the ``onnx`` extra is missing; an existing file is kept unless ``overwrite``."""
    path = usable_output_file(path, overwrite)
    if patch_tokens and not isinstance(getattr(backbone, "patch_size", None), int):
        raise DinoError(f"a {type(backbone).__name__} backbone has no patch tokens; --patch-tokens needs a ViT")
    require("onnxscript", "ONNX export")
    require("onnx", "ONNX export")
    module = ExportedOutputs(backbone.float().cpu().eval(), patch_tokens)
    shapes, (height, width) = _dynamic_shapes(backbone)
    example = torch.zeros(2, 3, height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                                        input_names=["images"], output_names=output_names(patch_tokens),
                                        external_data=False, verbose=False, report=False)
        finally:
            logging.getLogger("torch.onnx").setLevel(quiet)
    write_atomic(path, lambda tmp: program.save(tmp, external_data=False))
    return path


def onnx_session(path: str | Path, threads: Optional[int] = None):
    """An onnxruntime CPU inference session for an exported file (extra ``onnx``)."""
    ort = require("onnxruntime", "running an ONNX file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
