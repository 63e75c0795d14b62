"""The released DINO backbones and where weights come from: a local path, a URL (downloaded
once into the torch hub cache, atomically) or a released-model name.

A URL is downloaded into ``<torch hub dir>/checkpoints/`` (the place
``torch.hub.load_state_dict_from_url`` uses, so files fetched by the reference's hubconf are
reused). Without network access the error says so and where to put the file by hand.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

import torch

from dinossl.errors import CheckpointError
from dinossl.models import BackboneSpec
from dinossl.safe_files import read_weights_file, write_atomic

RELEASE_ROOT = "https://dl.fbaipublicfiles.com/dino"
DOWNLOAD_TIMEOUT_S = 30.0


class DownloadError(CheckpointError):
    """A weights URL that could not be fetched."""


@dataclass(frozen=True)
class Released:
    """One released DINO backbone: its architecture and its backbone-only file."""

    spec: BackboneSpec
    url: str


def _release(folder: str, spec: BackboneSpec) -> Released:
    return Released(spec, f"{RELEASE_ROOT}/{folder}/{folder}.pth")


RELEASED: dict[str, Released] = {
    "dino_vits16": _release("dino_deitsmall16_pretrain", BackboneSpec("vit_small", 16)),
    "dino_vits8": _release("dino_deitsmall8_pretrain", BackboneSpec("vit_small", 8)),
    "dino_vitb16": _release("dino_vitbase16_pretrain", BackboneSpec("vit_base", 16)),
    "dino_vitb8": _release("dino_vitbase8_pretrain", BackboneSpec("vit_base", 8)),
    "dino_resnet50": _release("dino_resnet50_pretrain", BackboneSpec("resnet50")),
}


def is_url(source: str | Path) -> bool:
    return isinstance(source, str) and urlparse(source).scheme in ("http", "https", "file", "ftp")


def cache_path(url: str, cache_dir: Optional[str | Path] = None) -> Path:
    """Where ``url`` is (or will be) cached: ``<cache_dir or torch hub dir>/checkpoints/<name>``."""
    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise DownloadError(f"{url} names no file")
    root = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return root / name


def download(url: str, destination: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` into ``destination`` atomically (a partial download never stays). The
    file is read safely before it enters the cache: one that is refused (a pickle that would
    run code, not a weights file) is not kept, so it is never found there later."""
    def fetch(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
        try:
            read_weights_file(tmp)
        except CheckpointError as exc:
            raise CheckpointError(f"{url}: {str(exc).replace(tmp + ': ', '')} (not kept in the download cache)") from exc

    try:
        write_atomic(destination, fetch)
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"cannot download {url} ({reason}); without network access, fetch the file elsewhere and "
            f"pass its local path, or copy it to {destination}"
        ) from exc
    return destination


def fetch(source: str | Path, cache_dir: Optional[str | Path] = None) -> Path:
    """A local file for ``source``: a path, a URL (downloaded once into the cache) or the name
    of a released model (``dino_vits16`` ...)."""
    if isinstance(source, str) and source in RELEASED:
        source = RELEASED[source].url
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
        return path
    destination = cache_path(str(source), cache_dir)
    if destination.is_file():
        return destination
    return download(str(source), destination)
