"""``dino eval knn --embedded TRAIN VAL``: the weighted k-NN on feature folders written by
``dino embed`` (of the train and val class folders) instead of computing the features again.

The folders must hold the k-NN's own features: the given weights (same SHA-256), the ``cls``
descriptor of one scale, and the evaluation's resize and center crop; labels are the class
folders of the images (sorted names, as an image folder numbers them).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from dinossl.errors import DataError
from dinossl.eval.classification.knn import KnnSettings
from dinossl.eval.classification.protocols import KNN, RESULTS_NAME, EvalTarget, ImageSettings, knn_results
from dinossl.eval.results import write_results
from dinossl.inference import weights_sha256
from dinossl.inference.feature_shards import FeatureFolder, as_tensor, load_features
from dinossl.outputs import usable_output_folder
from dinossl.runtime.distributed import DistContext


def check_knn_folder(folder: FeatureFolder, weights: str | Path, images: ImageSettings) -> None:
    """DataError unless ``folder`` holds the k-NN features of ``weights`` with ``images``' geometry."""
    manifest, settings = folder.manifest, folder.manifest["settings"]
    expected = weights_sha256(weights)
    if expected is None or manifest["weights"].get("sha256") != expected:
        raise DataError(f"{folder.folder} holds features of other weights ({manifest['weights'].get('path')})")
    wanted = {"pool": "cls", "multiscale": False, "keep_aspect": False, "resize": images.resize, "crop": images.crop}
    different = {k: settings[k] for k, v in wanted.items() if settings[k] != v}
    if different:
        raise DataError(f"{folder.folder} was embedded with {different}; the k-NN evaluation uses {wanted}")


def run_knn_embedded(target: EvalTarget, train: str | Path, val: str | Path,
                     images: ImageSettings = ImageSettings(), settings: KnnSettings = KnnSettings()) -> Optional[dict[str, Any]]:
    """The k-NN evaluation's results from two feature folders (one process)."""
    folders = [load_features(train), load_features(val)]
    for folder in folders:
        check_knn_folder(folder, target.weights, images)
    (bank_labels, classes), (query_labels, val_classes) = (f.labels_by_folder() for f in folders)
    if classes != val_classes:
        raise DataError(f"the train and val feature folders name different classes ({len(classes)} vs {len(val_classes)})")
    output = usable_output_folder(target.output_folder("knn"), target.overwrite) / RESULTS_NAME
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    results = knn_results(as_tensor(folders[0].descriptors), torch.from_numpy(bank_labels),
                          as_tensor(folders[1].descriptors), torch.from_numpy(query_labels), len(classes), settings, ctx)
    record = {
        "evaluation": "knn", "protocol": KNN, "weights": folders[0].manifest["weights"],
        "backbone": folders[0].manifest["architecture"],
        "data": {"train_features": str(Path(train).resolve()), "val_features": str(Path(val).resolve()),
                 "classes": classes},
        "settings": {**asdict(images), **asdict(settings), "features": "dino embed folders (cls)"},
        "results": results, "processes": 1, "device": "cpu",
    }
    write_results(output, record, overwrite=target.overwrite)
    return record
