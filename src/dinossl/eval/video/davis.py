"""DAVIS data: folder layout, annotation PNGs (DAVIS-2017 palette, DAVIS-2016 binary), and
scoring a folder of predicted masks per object, per sequence and overall.

Layout: ``<root>/JPEGImages/<resolution>/<sequence>/NNNNN.jpg`` and
``<root>/Annotations/<resolution>/<sequence>/NNNNN.png``; results are written as
``<output>/<sequence>/NNNNN.png`` palette images (the layout DAVIS's tools read).

Annotation values: in a palette (mode P) PNG the pixel value is the object id, 0 background
and 255 void (ignored in scoring); in a grayscale PNG, values of 128 and above are the one
object (id 1) when the image holds any such value (DAVIS-2016's 0/255 masks), otherwise the
small values are object ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from dinossl.errors import DataError
from dinossl.eval.mask_metrics import contour_accuracy, region_similarity

log = logging.getLogger("dinossl")

VOID = 255


def palette() -> list[int]:
    """The 256-colour DAVIS/PASCAL palette as a flat [r, g, b, ...] list: the bits of each
    index are spread over the high bits of the three channels (0 black, 1 red, 2 green...)."""
    colours = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours += [r, g, b]
    return colours


def read_annotation(path: str | Path) -> np.ndarray:
    """(H, W) uint8 object ids of an annotation PNG (see the module notes)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode, values = image.mode, np.asarray(image)
    except FileNotFoundError as exc:
        raise DataError(f"annotation {path} does not exist") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable annotation ({exc})") from exc
    if mode == "P":
        return values.astype(np.uint8)
    if mode == "1":
        return values.astype(np.uint8)
    if mode == "L":
        if values.max(initial=0) >= 128:
            if not np.isin(values, (0, 255)).all():
                log.warning("%s: grayscale mask with values other than 0/255, thresholded at 128", path)
            return (values >= 128).astype(np.uint8)
        return values.astype(np.uint8)
    raise DataError(f"{path}: a {mode} annotation; expected a palette PNG (DAVIS-2017, one index per object) "
                    "or a grayscale 0/255 PNG (DAVIS-2016)")


def write_annotation(path: str | Path, labels: np.ndarray) -> None:
    """Save (H, W) object ids as a palette PNG."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"labels must be a 2-D array of ids in [0, 255], got shape {labels.shape}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette())
    image.save(path)


def object_ids(labels: np.ndarray) -> list[int]:
    """Object ids present in an annotation (background 0 and void 255 excluded)."""
    return [int(v) for v in np.unique(labels) if v not in (0, VOID)]


@dataclass(frozen=True)
class DavisLayout:
    """A DAVIS-style dataset folder."""

    root: Path
    resolution: str = "480p"

    def frames_dir(self, sequence: str) -> Path:
        return self.root / "JPEGImages" / self.resolution / sequence

    def annotations_dir(self, sequence: str) -> Path:
        return self.root / "Annotations" / self.resolution / sequence

    def sequences(self, names: Optional[Sequence[str]] = None) -> list[str]:
        """The requested sequences (checked to exist), or every sequence with frames and annotations."""
        frames_root = self.root / "JPEGImages" / self.resolution
        notes_root = self.root / "Annotations" / self.resolution
        for folder in (frames_root, notes_root):
            if not folder.is_dir():
                raise DataError(f"{folder} does not exist: expected the DAVIS layout <root>/JPEGImages/"
                                f"{self.resolution}/<seq> and <root>/Annotations/{self.resolution}/<seq>")
        if names:
            for name in names:
                if not self.frames_dir(name).is_dir() or not self.annotations_dir(name).is_dir():
                    raise DataError(f"sequence {name!r} needs both {self.frames_dir(name)} "
                                    f"and {self.annotations_dir(name)}")
            return list(names)
        found = sorted(p.name for p in frames_root.iterdir() if p.is_dir() and (notes_root / p.name).is_dir())
        if not found:
            raise DataError(f"no sequence has both frames in {frames_root} and annotations in {notes_root}")
        return found


def score_sequence(predictions: Sequence[np.ndarray], truths: Sequence[Optional[np.ndarray]],
                   objects: Sequence[int]) -> dict[int, dict[str, float]]:
    """J and F means per object over the frames that have ground truth, the first and last
    frames excluded (DAVIS's semi-supervised protocol).

    Args:
        predictions: per frame, (H, W) predicted object ids.
        truths: per frame, (H, W) ground-truth ids or None where the frame has no annotation.
        objects: the object ids to score.

    Returns:
        {object id: {"J": mean J, "F": mean F, "frames": number of frames scored}}.
    """
    if len(predictions) != len(truths):
        raise ValueError("predictions and ground truth differ in length")
    scored = [i for i in range(1, len(truths) - 1) if truths[i] is not None]
    if not scored:
        raise DataError(f"nothing to score: {len(truths)} frames, and scoring needs annotated frames "
                        "other than the first and the last")
    results = {}
    for obj in objects:
        j_values, f_values = [], []
        for i in scored:
            truth, pred = truths[i], predictions[i]
            void = truth == VOID
            j_values.append(region_similarity(pred == obj, truth == obj, void))
            f_values.append(contour_accuracy(pred == obj, truth == obj, void))
        results[int(obj)] = {"J": float(np.mean(j_values)), "F": float(np.mean(f_values)), "frames": len(scored)}
    return results


def summarise(per_sequence: dict[str, dict[int, dict[str, float]]]) -> dict:
    """Per-sequence means over objects and the overall J, F and J&F means over all objects
    (DAVIS averages objects, not sequences)."""
    sequences = {}
    all_j, all_f = [], []
    for name, objects in per_sequence.items():
        j = [o["J"] for o in objects.values()]
        f = [o["F"] for o in objects.values()]
        all_j += j
        all_f += f
        sequences[name] = {
            "J": float(np.mean(j)), "F": float(np.mean(f)), "J&F": float((np.mean(j) + np.mean(f)) / 2),
            "objects": {str(k): v for k, v in objects.items()},
        }
    if not all_j:
        raise DataError("no object was scored")
    overall = {"J": float(np.mean(all_j)), "F": float(np.mean(all_f))}
    overall["J&F"] = (overall["J"] + overall["F"]) / 2
    return {"overall": overall, "objects": len(all_j), "sequences": sequences}
