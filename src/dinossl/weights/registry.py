"""The released DINO models and where weights come from: a local path, a URL (downloaded once
into a cache, atomically, with its SHA-256 recorded beside it) or a released-model name.

Cache layout, under ``cache_dir`` or ``<torch hub dir>/checkpoints/``:

* a released file (:data:`RELEASED`) goes where ``torch.hub.load_state_dict_from_url`` puts it,
  ``<root>/<file name>``, so a file fetched before by the reference's hubconf is reused;
* any other URL goes to ``<root>/dinossl/<first 16 hex digits of the URL's SHA-256>/<file name>``:
  two URLs ending in the same file name never share an entry.

Beside each cached file, ``<file>.sha256`` records its SHA-256 (``sha256sum`` format). The file
is hashed again on every reuse; a file that no longer matches is downloaded again. A released
file found without a record (fetched by the reference's hubconf) has its SHA-256 recorded on
first use; loading then checks every key and shape against the released architecture.
"""

from __future__ import annotations

import hashlib
import logging
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

log = logging.getLogger("dinossl")

RELEASE_ROOT = "https://dl.fbaipublicfiles.com/dino"
DOWNLOAD_TIMEOUT_S = 30.0
HASH_SUFFIX = ".sha256"
KEYED_FOLDER = "dinossl"
_CHUNK = 1 << 20


class DownloadError(CheckpointError):
    """A weights URL that could not be fetched."""


@dataclass(frozen=True)
class Released:
    """One released DINO backbone: its architecture, its backbone-only file, and the linear
    classifier the reference trained on its frozen features (ImageNet, 1000 classes) with the
    features that classifier reads: the [CLS] tokens of the last ``n_last_blocks`` blocks, and
    with ``avgpool`` the mean patch token too."""

    spec: BackboneSpec
    url: str
    linear_url: str
    n_last_blocks: int = 1
    avgpool: bool = False


def _release(folder: str, linear_stem: str, spec: BackboneSpec, n_last_blocks: int, avgpool: bool) -> Released:
    return Released(spec, f"{RELEASE_ROOT}/{folder}/{folder}.pth",
                    f"{RELEASE_ROOT}/{folder}/{linear_stem}_linearweights.pth", n_last_blocks, avgpool)


# The reference's linear evaluation: ViT-S reads 4 [CLS] tokens, ViT-B 1 [CLS] + the mean patch
# token, ResNet-50 its pooled output (the README's `eval_linear.py --evaluate` commands).
RELEASED: dict[str, Released] = {
    "dino_vits16": _release("dino_deitsmall16_pretrain", "dino_deitsmall16", BackboneSpec("vit_small", 16), 4, False),
    "dino_vits8": _release("dino_deitsmall8_pretrain", "dino_deitsmall8", BackboneSpec("vit_small", 8), 4, False),
    "dino_vitb16": _release("dino_vitbase16_pretrain", "dino_vitbase16", BackboneSpec("vit_base", 16), 1, True),
    "dino_vitb8": _release("dino_vitbase8_pretrain", "dino_vitbase8", BackboneSpec("vit_base", 8), 1, True),
    "dino_resnet50": _release("dino_resnet50_pretrain", "dino_resnet50", BackboneSpec("resnet50"), 1, False),
}
RELEASED_URLS = frozenset(url for r in RELEASED.values() for url in (r.url, r.linear_url))


def is_url(source: str | Path) -> bool:
    return isinstance(source, str) and urlparse(source).scheme in ("http", "https", "file", "ftp")


def url_key(url: str) -> str:
    """The cache folder name of a URL: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def cache_path(url: str, cache_dir: Optional[str | Path] = None) -> Path:
    """Where ``url`` is (or will be) cached: ``<root>/<name>`` for a released file (the torch hub
    location), ``<root>/dinossl/<url key>/<name>`` for any other URL; ``<root>`` is ``cache_dir``
    or ``<torch hub dir>/checkpoints``."""
    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise DownloadError(f"{url} names no file")
    root = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return root / name if url in RELEASED_URLS else root / KEYED_FOLDER / url_key(url) / name


def hash_record(path: Path) -> Path:
    """The file beside ``path`` that records its SHA-256."""
    return path.with_name(path.name + HASH_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_sha256(path: Path) -> Optional[str]:
    """The SHA-256 recorded beside ``path``, None when there is no (readable) record."""
    record = hash_record(path)
    if not record.is_file():
        return None
    words = record.read_text().split()
    return words[0].lower() if words and len(words[0]) == 64 else None


def record_sha256(path: Path, digest: str) -> None:
    write_atomic(hash_record(path), lambda tmp: Path(tmp).write_text(f"{digest}  {path.name}\n"))


def download(url: str, destination: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` into ``destination`` atomically (a partial download never stays) and record
    its SHA-256 beside it. The file is read safely before it enters the cache: one that is
    refused (a pickle that would run code, not a weights file) is not kept, so it is never found
    there later."""
    digest = hashlib.sha256()

    def fetch_into(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        try:
            read_weights_file(tmp)
        except CheckpointError as exc:
            raise CheckpointError(f"{url}: {str(exc).replace(tmp + ': ', '')} (not kept in the download cache)") from exc

    try:
        write_atomic(destination, fetch_into)
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"cannot download {url} ({reason}); without network access, fetch the file elsewhere and "
            f"pass its local path, or copy it to {destination}"
        ) from exc
    record_sha256(destination, digest.hexdigest())
    return destination


def cached(url: str, destination: Path) -> bool:
    """Whether ``destination`` holds ``url``'s file that may be reused: its SHA-256 matches the
    record beside it (a released file without a record, fetched by torch.hub, is recorded now)."""
    if not destination.is_file():
        return False
    recorded, actual = recorded_sha256(destination), file_sha256(destination)
    if recorded is None:
        log.info("reusing %s (found in the cache without a SHA-256 record; recorded now)", destination)
        record_sha256(destination, actual)
        return True
    if recorded != actual:
        log.warning("%s does not match the SHA-256 recorded when it was downloaded; downloading %s again",
                    destination, url)
        return False
    return True


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
    if cached(str(source), destination):
        return destination
    return download(str(source), destination)
