"""Read, check and write backbone (and head) weights in the reference DINO layout.

Accepted inputs, as ``.pth`` or ``.safetensors``:

* backbone-only state dicts: the released DINO files, timm ``vit_*_patch*_224.dino`` state
  dicts, ``dino export`` output (plain keys: ``cls_token``, ``blocks.0.attn.qkv.weight``, ...);
* network state dicts (``backbone.*`` / ``head.*``);
* full training checkpoints of this project or of the reference code (``teacher`` and
  ``student`` entries, ``module.`` prefixes, head ``last_layer.weight_g/weight_v`` or the
  parametrization names ``parametrizations.weight.original0/1``).

Safety: files are read by :mod:`dinossl.safe_files` (``weights_only=True``; the reference's
pickled ``argparse.Namespace`` becomes an inert :class:`ForeignObject`; any other global
refuses the whole file).

Strictness: every missing, unexpected or mis-shaped key is reported in one
:class:`~dinossl.errors.CheckpointError` that names them.

Modules, each building on the ones before it:

* :mod:`~dinossl.weights.layout`: backbone/head split, prefixes, teacher/student pick;
* :mod:`~dinossl.weights.sources`: a path, URL or released name, read and laid out;
* :mod:`~dinossl.weights.spec`: architectures inferred from tensors, read off modules, built;
* :mod:`~dinossl.weights.loading`: strict loading into new or existing modules;
* :mod:`~dinossl.weights.export`: writing the released layout.
"""

from dinossl.safe_files import INERT_GLOBALS, ForeignObject, read_weights_file
from dinossl.weights.export import (
    FORMATS,
    default_export_path,
    export_file_name,
    export_backbone_file,
    released_state,
    write_backbone,
)
from dinossl.weights.layout import NETWORKS, NetworkWeights
from dinossl.weights.loading import (
    load_backbone,
    load_backbone_into,
    load_network,
    load_state_strict,
    state_problems,
)
from dinossl.weights.sources import (
    local_file,
    read_backbone_state,
    read_network_weights,
)
from dinossl.weights.spec import HeadSpec, infer_head_spec, infer_spec

__all__ = [
    "FORMATS",
    "INERT_GLOBALS",
    "NETWORKS",
    "ForeignObject",
    "HeadSpec",
    "NetworkWeights",
    "default_export_path",
    "export_file_name",
    "export_backbone_file",
    "infer_head_spec",
    "infer_spec",
    "load_backbone",
    "load_backbone_into",
    "load_network",
    "load_state_strict",
    "local_file",
    "read_backbone_state",
    "read_network_weights",
    "read_weights_file",
    "released_state",
    "state_problems",
    "write_backbone",
]
