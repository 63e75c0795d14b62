"""Copy detection on a Copydays-style set made from real photos with strong edits: the layout,
mAP exactly 1 when every copy's nearest neighbour is its original, and ``dino eval
copydetection`` against a direct computation (descriptors, whitening, ranking, Holidays AP)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dinossl.cli import main
from dinossl.errors import DataError
from dinossl.eval.image_input import to_input
from dinossl.eval.retrieval.copydays import query_scores
from dinossl.eval.retrieval.copydays_files import open_copydays
from dinossl.weights import load_backbone

FAST = ["--num-workers", "0", "--no-progress"]


def test_layout_and_originals_of_each_copy(copydays_set):
    layout = open_copydays(copydays_set / "copydays")
    assert [p.name for p in layout.originals] == [f"{2000 + i}00.jpg" for i in range(6)]
    names = [block.name for block in layout.blocks]
    assert names == ["strong", "jpegqual/10", "crops/50"]
    strong = layout.blocks[0]
    assert len(strong.queries) == 9  # 6 edits + second copies of originals 0, 2, 4
    for query, positives in zip(strong.queries, strong.positives):
        assert [layout.originals[i].name[:4] for i in positives] == [query.name[:4]]
    assert layout.blocks[1].positives == tuple((i,) for i in range(6))


def test_layout_errors(copydays_set, tmp_path):
    root = tmp_path / "cd"
    shutil.copytree(copydays_set / "copydays", root)
    with pytest.raises(DataError, match="does not exist"):
        open_copydays(tmp_path / "nowhere")
    (root / "strong" / "999900_text.jpg").write_bytes((root / "strong" / "200000_crop.jpg").read_bytes())
    with pytest.raises(DataError, match="no original .* shares its first 4 characters"):
        open_copydays(root)
    (root / "strong" / "999900_text.jpg").unlink()
    (root / "crops" / "50" / "200000.jpg").unlink()
    with pytest.raises(DataError, match="5 images for 6 originals"):
        open_copydays(root)
    shutil.rmtree(root / "original")
    with pytest.raises(DataError, match="no original/ folder"):
        open_copydays(root)


def test_map_is_exactly_one_when_every_copy_finds_its_original_first():
    names = ["a.jpg", "b.jpg", "c.jpg"]
    queries = [type("P", (), {"name": f"q{i}.jpg"})() for i in range(3)]
    ranked = torch.tensor([[0, 2, 1], [1, 0, 2], [2, 1, 0]])
    sims = torch.tensor([[0.9, 0.5, 0.1]] * 3)
    assert query_scores(ranked, sims, [(0,), (1,), (2,)], names, names, queries)["mAP"] == 100.0
    # Query 1's original second: its AP is (0/1 + 1/2)/2 = 1/4.
    worse = query_scores(torch.tensor([[0, 2, 1], [0, 1, 2], [2, 1, 0]]), sims, [(0,), (1,), (2,)], names, names,
                         queries)
    assert worse["mAP"] == pytest.approx(100 * (1 + 0.25 + 1) / 3)
    assert worse["per_query"][1]["original_ranks"] == [1] and worse["per_query"][1]["nearest"] == "a.jpg"


def _direct_descriptors(vit, paths, imsize):
    """[CLS] + GeM(p=4) of the last layer's patch tokens, images resized square (bicubic)."""
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((imsize, imsize), Image.Resampling.BICUBIC)
        with torch.no_grad():
            tokens = vit.intermediate_layers(to_input(image), 1)[0][0].double()
        gem = tokens[1:].clamp(min=1e-6).pow(4).mean(dim=0).pow(0.25)
        out.append(torch.cat([tokens[0], gem]).numpy())
    return np.array(out)


def _direct_ap(ranked, positives):
    """Holidays AP restated: trapezoids from the ranks of the true positives among the results."""
    ranks = [r for r, i in enumerate(ranked) if i in positives]
    return sum(((n / r if r else 1.0) + (n + 1) / (r + 1)) / 2 for n, r in enumerate(ranks)) / len(positives)


@pytest.mark.parametrize("whiten, protocol", [(False, "dinossl"), (True, "dinossl"), (True, "reference")])
def test_copydetection_command_matches_a_direct_computation(copydays_set, vit_weights, tmp_path, whiten, protocol,
                                                            capsys):
    out = tmp_path / "out"
    imsize = 96
    extra = ["--whitening", str(copydays_set / "whitening")] if whiten else []
    extra += ["--protocol", protocol] if protocol != "dinossl" else []
    assert main(["eval", "copydetection", str(vit_weights), "--data", str(copydays_set / "copydays"),
                 "--distractors", str(copydays_set / "distractors"), "--imsize", str(imsize), "--output", str(out),
                 *extra, *FAST]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "results.json").read_text())
    assert record["data"]["distractor_images"] == 10 and record["results"]["database_images"] == 16
    assert record["settings"]["descriptor"] == {"pooling": "cls+gem", "scales": [1.0], "mirror": False, "gem_p": 4.0}
    assert record["results"]["descriptor_dim"] == 2 * 192

    layout = open_copydays(copydays_set / "copydays")
    vit = load_backbone(vit_weights).eval()
    distractors = sorted((copydays_set / "distractors").glob("*.jpg"))
    database = _direct_descriptors(vit, [*layout.originals, *distractors], imsize)
    transform = lambda x: x
    if whiten:
        learning = _direct_descriptors(vit, sorted((copydays_set / "whitening").glob("*.jpg")), imsize)
        mean = learning.mean(axis=0)
        moment = learning if protocol == "dinossl" else learning + mean  # reference: uncentred
        values, vectors = np.linalg.eigh((moment - mean).T @ (moment - mean) / len(learning))
        values = np.maximum(values, values.max() * 1e-5)
        transform = lambda x: (x - mean) @ vectors / np.sqrt(values)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    database = unit(transform(database))
    for block in layout.blocks:
        queries = unit(transform(_direct_descriptors(vit, block.queries, imsize)))
        sims = queries @ database.T
        aps, nearest_is_original = [], []
        for q, positives in enumerate(block.positives):
            ranked = sorted(range(len(database)), key=lambda i: -sims[q, i])[:20]
            aps.append(_direct_ap(ranked, set(positives)))
            nearest_is_original.append(ranked[0] in positives and len(positives) == 1)
        reported = record["results"]["blocks"][block.name]
        assert reported["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-3)
        assert [q["ap"] for q in reported["per_query"]] == pytest.approx([100 * a for a in aps], abs=1e-3)
        if all(nearest_is_original):
            assert reported["mAP"] == 100.0
        assert f"{block.name}" in printed
    assert record["settings"]["protocol"] == protocol
    if whiten:
        assert record["results"]["whitening"]["learned_on"] == 20
        assert record["results"]["whitening"]["centred_covariance"] is (protocol == "dinossl")
