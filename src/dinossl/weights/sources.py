"""Where weights come from: a local file, a URL, a released-model name or a Hugging Face Hub
repository (``hf-hub:ORG/NAME[@REVISION]``), read safely and split into backbone and head
tensors; a ``transformers`` ViT is converted to the released layout key for key
(:mod:`~dinossl.weights.transformers_layout`).

``hf-hub:`` repositories: timm's (``hf-hub:timm/vit_small_patch16_224.dino``: a backbone in
the released layout) and ``transformers``' (``hf-hub:facebook/dino-vits16``). The weights file
(``model.safetensors``, else ``pytorch_model.bin``) is fetched by ``huggingface_hub`` into its
own cache, which is keyed by repository and revision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from dinossl.errors import CheckpointError
from dinossl.optional import require
from dinossl.safe_files import read_weights_file
from dinossl.weights.layout import NetworkWeights, check_which, pick_network
from dinossl.weights.registry import RELEASED, fetch, is_url
from dinossl.weights.transformers_layout import from_transformers_vit, is_transformers_vit

HF_PREFIX = "hf-hub:"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hf_hub(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(HF_PREFIX)


def parse_hf_hub(source: str) -> tuple[str, Optional[str]]:
    """``hf-hub:ORG/NAME[@REVISION]`` -> (``ORG/NAME``, revision or None); CheckpointError otherwise."""
    repo, _, revision = source[len(HF_PREFIX):].partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise CheckpointError(f"{source}: a Hugging Face Hub source is hf-hub:ORG/NAME (optionally @REVISION)")
    return repo, revision or None


def hf_hub_file(source: str) -> Path:
    """The weights file of an ``hf-hub:`` repository, downloaded by ``huggingface_hub`` (or taken
    from its cache); CheckpointError in one line when it cannot be had."""
    repo, revision = parse_hf_hub(source)
    hub = require("huggingface_hub", f"{source}")
    errors = require("huggingface_hub.errors", f"{source}")
    reasons = []
    for filename in HF_WEIGHT_FILES:
        try:
            return Path(hub.hf_hub_download(repo, filename, revision=revision))
        except errors.LocalEntryNotFoundError as exc:  # offline, and not in huggingface_hub's cache
            raise CheckpointError(
                f"cannot fetch {filename} of {source} ({_first_line(exc)}); without network access, download it "
                f"elsewhere and pass its local path") from exc
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
            raise CheckpointError(f"{source}: no such repository or revision ({_first_line(exc)})") from exc
        except errors.EntryNotFoundError:
            reasons.append(f"no {filename}")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot fetch {filename} of {source} ({_first_line(exc)})") from exc
    raise CheckpointError(f"{source}: the repository holds {' and '.join(reasons)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def local_file(source: str | Path, cache_dir: Optional[str | Path] = None) -> Path:
    """``source`` as a local path; a URL or a released-model name (``dino_vits16`` ...) is
    fetched by :func:`dinossl.weights.registry.fetch` into the torch hub cache (once), an
    ``hf-hub:`` repository by ``huggingface_hub``."""
    if is_hf_hub(source):
        return hf_hub_file(str(source))
    if isinstance(source, str) and not Path(source).exists() and (is_url(source) or source in RELEASED):
        return fetch(source, cache_dir)
    return Path(source)


def read_network_weights(path: str | Path, which: str = "teacher") -> NetworkWeights:
    """Backbone and head tensors of ``path`` (a file, URL, ``hf-hub:`` repository or released
    name); ``which`` picks the network of a training checkpoint."""
    check_which(which)  # before any download
    weights = pick_network(read_weights_file(local_file(path)), which, str(path))
    if not weights.head and is_transformers_vit(weights.backbone):
        weights.backbone = from_transformers_vit(weights.backbone, str(path))
    return weights


def read_backbone_state(path: str | Path, which: str = "teacher") -> dict[str, torch.Tensor]:
    """Backbone tensors of a weights file in the released layout (prefixes removed, head dropped).

    ``which`` picks the ``teacher`` (default) or ``student`` network of a training checkpoint.
    """
    weights = read_network_weights(path, which)
    if not weights.backbone:
        raise CheckpointError(f"{path}: the {which} network has no backbone tensors")
    return weights.backbone
