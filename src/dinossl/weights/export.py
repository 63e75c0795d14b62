"""Writing backbones in the released layout: exactly the released keys and shapes, as a plain
``.pth`` state dict or ``.safetensors``, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from dinossl.errors import CheckpointError
from dinossl.models import BackboneSpec, build_backbone
from dinossl.outputs import usable_output_file
from dinossl.safe_files import write_atomic
from dinossl.weights.loading import state_problems
from dinossl.weights.sources import read_backbone_state
from dinossl.weights.spec import infer_spec

FORMATS = ("pth", "safetensors")  # state-dict formats; dinossl.cli.export adds onnx (dinossl.inference.onnx_export)


def released_state(state: dict[str, torch.Tensor], spec: Optional[BackboneSpec] = None,
                   source: str = "weights") -> dict[str, torch.Tensor]:
    """``state`` checked against the backbone it describes and ordered as its state dict:
    exactly the released keys and shapes (contiguous CPU tensors, values untouched)."""
    spec = spec or infer_spec(state)
    with torch.device("meta"):
        expected = build_backbone(spec).state_dict()
    problems = state_problems(expected, state)
    if problems:
        raise CheckpointError(f"{source} is not a {spec.describe()} backbone: " + "; ".join(problems))
    return {k: state[k].detach().cpu().contiguous() for k in expected if k in state}


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors whose memory another entry already uses (safetensors refuses sharing)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def write_backbone(state: dict[str, torch.Tensor], path: str | Path, fmt: Optional[str] = None,
                   overwrite: bool = False) -> Path:
    """Write a backbone state dict as a plain ``.pth`` state dict or ``.safetensors``, atomically.

    ``fmt`` defaults to the path's suffix. An existing file is kept unless ``overwrite``.
    """
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    if fmt not in FORMATS:
        raise CheckpointError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    usable_output_file(path, overwrite)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if fmt == "pth":
        write_atomic(path, lambda tmp: torch.save(tensors, tmp))
    else:
        write_atomic(path, lambda tmp: save_file(_unshared(tensors), tmp, metadata={"format": "pt"}))
    return path


def export_file_name(checkpoint: str | Path, fmt: str, which: str = "teacher") -> str:
    """``<stem>_<which>_backbone.<fmt>`` for a checkpoint, backbone file, URL or released name."""
    return f"{Path(str(checkpoint).split('?')[0]).stem}_{which}_backbone.{fmt}"


def default_export_path(checkpoint: str | Path, fmt: str, which: str = "teacher") -> Path:
    """``<folder>/<stem>_<which>_backbone.<fmt>`` beside a local checkpoint."""
    return Path(checkpoint).with_name(export_file_name(checkpoint, fmt, which))


def export_backbone_file(checkpoint: str | Path, output: Optional[str | Path] = None, fmt: Optional[str] = None,
                         which: str = "teacher", overwrite: bool = False) -> tuple[Path, BackboneSpec]:
    """Write the ``which`` backbone of ``checkpoint`` in the released layout; returns the file
    written and its architecture. ``fmt`` defaults to ``output``'s suffix, else ``pth``."""
    if fmt is None:
        fmt = Path(output).suffix.lstrip(".") if output is not None and Path(output).suffix else "pth"
    if fmt not in FORMATS:
        raise CheckpointError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if output is not None and Path(output).suffix and Path(output).suffix.lstrip(".") != fmt:
        raise CheckpointError(f"output {output} does not end in .{fmt}")
    output = Path(output) if output is not None else default_export_path(checkpoint, fmt, which)
    usable_output_file(output, overwrite)  # before the (possibly long) read
    state = read_backbone_state(checkpoint, which)
    spec = infer_spec(state)
    return write_backbone(released_state(state, spec, str(checkpoint)), output, fmt, overwrite), spec
