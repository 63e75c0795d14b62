"""The revisited protocol on a benchmark built from real photos: mAP Medium/Hard known by
construction for a perfect and a reversed ranking; ``dino eval retrieval`` end to end against a
direct computation of descriptors, ranking and AP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from dinossl.cli import main
from dinossl.eval.image_input import to_input
from dinossl.eval.retrieval.benchmark_files import open_revisited
from dinossl.eval.retrieval.ranking_metrics import revisited_scores
from dinossl.weights import load_backbone

FAST = ["--num-workers", "0", "--no-progress"]


def _rankings(bench, reverse: bool) -> np.ndarray:
    """Per query: hard, easy, junk, then every other image (reversed: the opposite order)."""
    out = []
    for truth in bench.gnd:
        listed = [*truth.hard, *truth.easy, *truth.junk]
        ranking = listed + [i for i in range(len(bench.imlist)) if i not in listed]
        out.append(ranking[::-1] if reverse else ranking)
    return np.array(out)


def _truths(bench):
    return [(q.easy, q.hard, q.junk) for q in bench.gnd]


def test_perfect_ranking_scores_one(revisited_root):
    bench = open_revisited(revisited_root, "roxford5k")
    scores = revisited_scores(_rankings(bench, reverse=False), _truths(bench))
    assert scores["medium"]["mAP"] == 1.0 and scores["hard"]["mAP"] == 1.0
    assert scores["medium"]["mP@k"] == {1: 1.0, 5: 1.0, 10: 1.0}
    assert scores["hard"]["ap"][2] is None  # query 2 has no hard positive


def test_reversed_ranking_scores_known_by_construction(revisited_root):
    bench = open_revisited(revisited_root, "roxford5k")
    scores = revisited_scores(_rankings(bench, reverse=True), _truths(bench))

    # Reversed, junk taken out, the positives are the last ones. Trapezoids (i/r + (i+1)/(r+1))/2
    # per positive i at rank r, times 1/(number of positives):
    # query 0 Medium: 12 images - 1 junk = 11; positives (2 easy + 1 hard) at ranks 8, 9, 10.
    ap0m = ((0 / 8 + 1 / 9) / 2 + (1 / 9 + 2 / 10) / 2 + (2 / 10 + 3 / 11) / 2) / 3
    # query 0 Hard: junk + easy = 3 removed; the hard positive at rank 8 of 9.
    ap0h = (0 / 8 + 1 / 9) / 2
    # query 1 Medium: 2 junk removed; 1 easy + 2 hard at ranks 7, 8, 9.
    ap1m = ((0 / 7 + 1 / 8) / 2 + (1 / 8 + 2 / 9) / 2 + (2 / 9 + 3 / 10) / 2) / 3
    # query 1 Hard: 2 junk + 1 easy removed; 2 hard at ranks 7, 8.
    ap1h = ((0 / 7 + 1 / 8) / 2 + (1 / 8 + 2 / 9) / 2) / 2
    # query 2 Medium: 1 junk removed; 1 easy at rank 10. Hard: no positive, not counted.
    ap2m = (0 / 10 + 1 / 11) / 2
    assert scores["medium"]["ap"] == pytest.approx([ap0m, ap1m, ap2m])
    assert scores["hard"]["ap"][:2] == pytest.approx([ap0h, ap1h])
    assert scores["medium"]["mAP"] == pytest.approx((ap0m + ap1m + ap2m) / 3)
    assert scores["hard"]["mAP"] == pytest.approx((ap0h + ap1h) / 2)
    # mP@10, Medium: query 0's positives at 1-based 9, 10, 11 -> 2 of 10; query 1's at 8, 9, 10 -> 3
    # of 10; query 2's at 11 -> 0 of 10.
    assert scores["medium"]["mP@k"][10] == pytest.approx((0.2 + 0.3 + 0.0) / 3)
    assert scores["medium"]["mP@k"][1] == 0.0


def _direct_ap(ranking, positives, junk) -> float:
    """The benchmark's AP restated: drop junk, then trapezoids over recall."""
    kept = [i for i in ranking if i not in junk]
    ranks = [r for r, i in enumerate(kept) if i in positives]
    ap = 0.0
    for found, rank in enumerate(ranks):
        ap += ((found / rank if rank else 1.0) + (found + 1) / (rank + 1)) / 2 / len(positives)
    return ap


@pytest.mark.parametrize("crop", [False, True])
def test_retrieval_command_matches_a_direct_computation(revisited_root, vit_weights, tmp_path, crop, capsys):
    out = tmp_path / "out"
    args = ["eval", "retrieval", str(vit_weights), "--data", str(revisited_root), "--dataset", "roxford5k",
            "--imsize", "96", "--output", str(out), *FAST] + (["--crop-queries"] if crop else [])
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "results.json").read_text())
    assert record["evaluation"] == "retrieval" and record["data"]["queries"] == 3
    assert record["settings"]["queries"] == ("bbx crops" if crop else "whole query images")
    assert record["settings"]["imsize"] == 96 and record["weights"]["path"] == str(vit_weights.resolve())

    # Direct: thumbnail to 96, crop to multiples of 16, [CLS], cosine, stable descending order.
    bench = open_revisited(revisited_root, "roxford5k")
    vit = load_backbone(vit_weights).eval()

    def describe(path, box=None):
        image = Image.open(path).convert("RGB")
        if box is not None:
            image = image.crop(tuple(round(v) for v in box))
        image.thumbnail((96, 96), Image.Resampling.LANCZOS)
        x = to_input(image)
        with torch.no_grad():
            return F.normalize(vit(x[..., : x.shape[2] // 16 * 16, : x.shape[3] // 16 * 16]), dim=1)[0]

    database = torch.stack([describe(p) for p in bench.database_paths])
    for q, (path, truth) in enumerate(zip(bench.query_paths, bench.gnd)):
        sims = database @ describe(path, truth.bbx if crop else None)
        ranking = sorted(range(len(sims)), key=lambda i: (-float(sims[i]), i))
        per_query = record["results"]["per_query"][q]
        assert per_query["top"] == [bench.imlist[i] for i in ranking[:5]]
        medium = _direct_ap(ranking, {*truth.easy, *truth.hard}, set(truth.junk))
        assert per_query["medium_ap"] == pytest.approx(100 * medium)
        if truth.hard:
            hard = _direct_ap(ranking, set(truth.hard), {*truth.junk, *truth.easy})
            assert per_query["hard_ap"] == pytest.approx(100 * hard)
        else:
            assert per_query["hard_ap"] is None
    medium_map = record["results"]["medium"]["mAP"]
    assert medium_map == pytest.approx(np.mean([p["medium_ap"] for p in record["results"]["per_query"]]))
    assert f"mAP {medium_map:.2f}" in printed


def test_multiscale_is_recorded(revisited_root, vit_weights, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    base = ["eval", "retrieval", str(vit_weights), "--data", str(revisited_root), "--dataset", "roxford5k",
            "--imsize", "128", *FAST]
    assert main(base + ["--output", str(single)]) == 0
    assert main(base + ["--output", str(multi), "--multiscale"]) == 0
    one = json.loads((single / "results.json").read_text())
    three = json.loads((multi / "results.json").read_text())
    assert three["settings"]["descriptor"]["scales"] == pytest.approx([1.0, 2 ** -0.5, 0.5])
    assert one["settings"]["descriptor"]["scales"] == [1.0]
