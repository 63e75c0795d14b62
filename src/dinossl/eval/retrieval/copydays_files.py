"""The Copydays layout as distributed, and which originals each query copies.

``ROOT/original/*.jpg`` are the database; query blocks are ``ROOT/strong/`` (a strong copy's
originals are those whose file name shares its first four characters) and, when present,
``ROOT/jpegqual/<quality>/`` and ``ROOT/crops/<percent>/``, whose files correspond one to one,
in sorted order, to the originals (as the reference evaluates them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dinossl.errors import DataError
from dinossl.eval.retrieval.image_files import list_images

log = logging.getLogger("dinossl")

PREFIX = 4  # characters of a file name that name its group of originals
ONE_TO_ONE = ("jpegqual", "crops")


@dataclass(frozen=True)
class QueryBlock:
    """One block of queries and, per query, the indices of its originals."""

    name: str
    queries: tuple[Path, ...]
    positives: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class CopydaysLayout:
    root: Path
    originals: tuple[Path, ...]
    blocks: tuple[QueryBlock, ...]

    def describe(self) -> dict:
        return {"root": str(self.root.resolve()), "originals": len(self.originals),
                "blocks": {block.name: len(block.queries) for block in self.blocks}}


def _numeric_then_name(path: Path) -> tuple[int, str]:
    return (int(path.name), path.name) if path.name.isdigit() else (1 << 30, path.name)


def _strong_block(folder: Path, originals: tuple[Path, ...]) -> QueryBlock:
    queries = tuple(list_images(folder, "strong copies folder"))
    positives = []
    for query in queries:
        matches = tuple(i for i, original in enumerate(originals) if original.name[:PREFIX] == query.name[:PREFIX])
        if not matches:
            raise DataError(f"{query}: no original in {originals[0].parent} shares its first {PREFIX} characters "
                            f"({query.name[:PREFIX]!r})")
        positives.append(matches)
    return QueryBlock("strong", queries, tuple(positives))


def _one_to_one_block(folder: Path, name: str, originals: tuple[Path, ...]) -> QueryBlock:
    queries = tuple(list_images(folder, f"{name} folder"))
    if len(queries) != len(originals):
        raise DataError(f"{folder} holds {len(queries)} images for {len(originals)} originals; "
                        "its files must correspond one to one to original/")
    renamed = [q.name for q, o in zip(queries, originals) if q.stem != o.stem]
    if renamed:
        log.warning("%s: %d file names differ from original/ (e.g. %s); matched by sorted order",
                    folder, len(renamed), renamed[0])
    return QueryBlock(name, queries, tuple((i,) for i in range(len(queries))))


def open_copydays(root: str | Path) -> CopydaysLayout:
    """Read and check the layout (see the module docstring); DataError naming the problem."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Copydays folder {root} does not exist")
    if not (root / "original").is_dir():
        raise DataError(f"{root} has no original/ folder (expected ROOT/original and ROOT/strong)")
    if not (root / "strong").is_dir():
        raise DataError(f"{root} has no strong/ folder (expected ROOT/original and ROOT/strong)")
    originals = tuple(list_images(root / "original", "originals folder"))
    blocks = [_strong_block(root / "strong", originals)]
    for group in ONE_TO_ONE:
        if (root / group).is_dir():
            for sub in sorted((p for p in (root / group).iterdir() if p.is_dir()), key=_numeric_then_name):
                blocks.append(_one_to_one_block(sub, f"{group}/{sub.name}", originals))
    return CopydaysLayout(root, originals, tuple(blocks))
