"""``dino dedupe`` on real photos with planted duplicates; groups; query mode; output folders."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from dinossl.cli import main
from dinossl.errors import DinoError
from dinossl.inference import BackboneHarness, LoadedBackbone
from dinossl.eval.retrieval.dedupe import check_output_folder, connected_groups, group_records
from dinossl.eval.search import Pairs

from tests.eval.retrieval.conftest import save_jpeg

FAST = ["--num-workers", "0", "--no-progress", "--batch-size", "16"]


def test_connected_groups_by_hand():
    # Edges 0-1, 1-2 (a chain), 6-5, and 4 alone: groups {0, 1, 2} and {5, 6}.
    groups = connected_groups(8, np.array([0, 1, 5]), np.array([1, 2, 6]))
    assert [g.tolist() for g in groups] == [[0, 1, 2], [5, 6]]
    assert connected_groups(3, np.array([], dtype=int), np.array([], dtype=int)) == []


def test_group_records_by_hand():
    pairs = Pairs(np.array([5, 0, 1]), np.array([6, 1, 2]), np.array([0.99, 0.95, 0.92], dtype=np.float32))
    names = [f"img{i}.jpg" for i in range(8)]
    records = group_records(connected_groups(8, pairs.first, pairs.second), pairs, names)
    assert [(r["group"], r["size"], r["pairs"], r["max_similarity"], r["min_similarity"]) for r in records] == [
        (1, 3, 2, pytest.approx(0.95), pytest.approx(0.92)), (2, 2, 1, pytest.approx(0.99), pytest.approx(0.99))]
    assert records[0]["images"] == ["img0.jpg", "img1.jpg", "img2.jpg"]


def test_connected_groups_match_a_graph_search():
    rng = np.random.default_rng(0)
    n = 300
    first, second = rng.integers(0, n, 200), rng.integers(0, n, 200)
    keep = first != second
    first, second = np.minimum(first, second)[keep], np.maximum(first, second)[keep]
    neighbours = {i: set() for i in range(n)}
    for a, b in zip(first.tolist(), second.tolist()):
        neighbours[a].add(b)
        neighbours[b].add(a)
    seen, expected = set(), []
    for start in range(n):
        if start in seen or not neighbours[start]:
            continue
        stack, component = [start], set()
        while stack:
            node = stack.pop()
            if node not in component:
                component.add(node)
                stack.extend(neighbours[node] - component)
        seen |= component
        expected.append(sorted(component))
    found = [g.tolist() for g in connected_groups(n, first, second)]
    assert sorted(found) == sorted(expected)
    assert [len(g) for g in found] == sorted((len(g) for g in found), reverse=True)


def _recompressed(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=30)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, horse_photos) -> tuple[Path, set[frozenset[str]]]:
    """A folder tree of 40 distinct photos, plus copies of 4 of them (resized, recompressed,
    flipped, and all three), placed elsewhere in the tree; and the expected duplicate pairs."""
    root = tmp_path_factory.mktemp("planted") / "photos"
    names = []
    for i, photo in enumerate(horse_photos[:40]):
        name = f"{'a' if i % 2 else 'b/c'}/p{i:02d}.jpg"
        with Image.open(photo) as image:
            save_jpeg(image, root / name)
        names.append(name)
    copies = {
        "copies/resized.jpg": (3, lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC)),
        "copies/recompressed.jpg": (10, _recompressed),
        "copies/flipped.png": (17, ImageOps.mirror),
        "b/all_three.jpg": (25, lambda im: _recompressed(ImageOps.mirror(im.resize((im.width * 3 // 4,
                                                                                    im.height * 3 // 4))))),
    }
    expected = set()
    for name, (source, edit) in copies.items():
        with Image.open(root / names[source]) as image:
            copy = edit(image.convert("RGB"))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        copy.save(root / name)
        expected.add(frozenset((names[source], name)))
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    return root, expected


def test_dedupe_finds_the_planted_duplicates_and_nothing_else(planted, vit_weights, tmp_path, capsys):
    root, expected = planted
    out = tmp_path / "out"
    assert main(["dedupe", str(vit_weights), str(root), "--output", str(out), "--threshold", "0.999",
                 "--flip-invariant", *FAST]) == 0
    assert "44 images (1 unreadable); 4 pairs" in capsys.readouterr().out
    with open(out / "pairs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {frozenset((r["path_a"], r["path_b"])) for r in rows} == expected
    assert all(float(r["similarity"]) > 0.999 for r in rows)
    record = json.loads((out / "groups.json").read_text())
    assert [g["size"] for g in record["groups"]] == [2, 2, 2, 2]
    assert {frozenset(g["images"]) for g in record["groups"]} == expected
    summary = record["summary"]
    assert summary["index"]["unreadable_files"].keys() == {"a/broken.jpg"}
    assert summary["index"]["readable"] == 44 and summary["search"]["pairs_compared"] == 44 * 43 // 2
    assert summary["settings"]["flip_invariant"] and summary["weights"]["which"] == "teacher"
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width >= 2 * 128 and sheet.height > 4 * 128

    # A lower threshold on the same index reuses it (nothing described again) and finds more pairs.
    assert main(["dedupe", str(vit_weights), str(root), "--output", str(out), "--threshold", "0.99",
                 "--flip-invariant", "--overwrite", *FAST]) == 0
    again = json.loads((out / "groups.json").read_text())["summary"]
    assert again["index"]["described_now"] == 0 and again["pairs"] >= 4

    # Query mode in the same folder: each copy's nearest other image is its original.
    queries = [str(root / sorted(pair)[0]) for pair in expected]
    assert main(["dedupe", str(vit_weights), str(root), "--output", str(out), "--flip-invariant", "--query",
                 *queries, "--top-k", "3", *FAST]) == 0
    answer = json.loads((out / "neighbours.json").read_text())
    for pair, entry in zip(expected, answer["queries"]):
        query_name = str(Path(entry["query"]).relative_to(root))
        assert entry["neighbours"][0]["path"] == query_name and entry["neighbours"][0]["similarity"] > 0.9999
        assert frozenset((query_name, entry["neighbours"][1]["path"])) == pair
    assert answer["summary"]["index"]["described_now"] == 0
    with open(out / "neighbours.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * len(queries)


class ColourStatistics(nn.Module):
    """A backbone whose output is each channel's mean and standard deviation (6 values), so
    44 images are many more than the descriptor's dimensions, as whitening needs."""

    patch_size = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_whitening_on_the_folder_itself_matches_a_direct_computation(planted, tmp_path, monkeypatch, dinossl_log):
    root, expected_copies = planted
    monkeypatch.setattr(BackboneHarness, "load", lambda self: LoadedBackbone(ColourStatistics(), torch.device("cpu")))
    out = tmp_path / "white"
    assert main(["dedupe", "colour-statistics", str(root), "--output", str(out), "--descriptor", "cls",
                 "--threshold", "0.9", "--whiten", *FAST]) == 0
    record = json.loads((out / "groups.json").read_text())
    assert record["summary"]["whitening"]["learned_on"] == 44 and record["summary"]["descriptor_dim"] == 6
    assert "whitening learned on" not in dinossl_log.text  # 44 images for 6 dimensions: no warning
    with open(out / "pairs.csv", newline="") as handle:
        found = {frozenset((r["path_a"], r["path_b"])) for r in csv.DictReader(handle)}
    # Direct: whiten the stored descriptors with the covariance of the readable ones, compare.
    store = np.load(out / "index" / "features.npy").astype(np.float64)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".jpg", ".png"))
    readable = [i for i, name in enumerate(names) if name != "a/broken.jpg"]
    rows = store[readable]
    mean = rows.mean(axis=0)
    values, vectors = np.linalg.eigh((rows - mean).T @ (rows - mean) / len(rows))
    values = np.maximum(values, values.max() * 1e-5)
    white = (rows - mean) @ vectors / np.sqrt(values)
    white /= np.linalg.norm(white, axis=1, keepdims=True)
    sims = white @ white.T
    expected, close = set(), set()
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            pair = frozenset((names[readable[a]], names[readable[b]]))
            if abs(sims[a, b] - 0.9) < 1e-3:
                close.add(pair)
            elif sims[a, b] > 0.9:
                expected.add(pair)
    assert expected_copies <= expected and found - close == expected


def test_output_folder_rules(tmp_path):
    assert check_output_folder(tmp_path / "new", ["pairs.csv"]) == tmp_path / "new"
    (tmp_path / "resume" / "index").mkdir(parents=True)
    check_output_folder(tmp_path / "resume", ["pairs.csv"])  # an index alone: resumed
    (tmp_path / "resume" / "pairs.csv").write_text("")
    check_output_folder(tmp_path / "resume", ["neighbours.csv"])  # the other mode's results are kept
    with pytest.raises(DinoError, match="already holds pairs.csv"):
        check_output_folder(tmp_path / "resume", ["pairs.csv"])
    (tmp_path / "resume" / "mine.txt").write_text("")
    with pytest.raises(DinoError, match="holds other files"):
        check_output_folder(tmp_path / "resume", ["neighbours.csv"])
    check_output_folder(tmp_path / "resume", ["pairs.csv"], overwrite=True)


def test_an_output_folder_inside_the_image_folder_is_not_indexed(vit_weights, horse_photos, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for i, photo in enumerate(random.Random(0).sample(horse_photos, 6)):
        with Image.open(photo) as image:
            save_jpeg(image, root / f"{i}.jpg")
    monkeypatch.chdir(root)
    assert main(["dedupe", str(vit_weights), ".", "--imsize", "32", *FAST]) == 0
    out = root / "dedupe-photos-tiny_vit"
    assert (out / "contact_sheet.png").is_file()
    assert main(["dedupe", str(vit_weights), ".", "--imsize", "32", "--overwrite", *FAST]) == 0
    summary = json.loads((out / "groups.json").read_text())["summary"]
    assert summary["index"]["images"] == 6 and summary["index"]["described_now"] == 0


def test_a_killed_dedupe_resumes_where_it_stopped(vit_weights, horse_photos, tmp_path):
    """SIGKILL mid-index, then the same command: the run resumes and its descriptors equal
    those of a run that was never interrupted."""
    root = tmp_path / "photos"
    root.mkdir()
    for i, photo in enumerate(horse_photos[:60]):
        shutil.copy(photo, root / f"{i:02d}.jpg")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")}
    common = [sys.executable, "-m", "dinossl", "dedupe", str(vit_weights), str(root), "--imsize", "384",
              "--batch-size", "1", *FAST]
    killed_out = tmp_path / "killed"
    process = subprocess.Popen([*common, "--output", str(killed_out)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    progress = killed_out / "index" / "progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(progress.read_text())["done"] >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = json.loads(progress.read_text())["done"]
    assert 3 <= done_at_kill < 60 and not (killed_out / "pairs.csv").exists()

    assert subprocess.run([*common, "--output", str(killed_out)], env=env, capture_output=True).returncode == 0
    fresh_out = tmp_path / "fresh"
    assert subprocess.run([*common, "--output", str(fresh_out)], env=env, capture_output=True).returncode == 0
    resumed = json.loads((killed_out / "groups.json").read_text())["summary"]["index"]
    assert resumed["resumed_from"] >= done_at_kill and resumed["described_now"] == 60 - resumed["resumed_from"]
    assert np.array_equal(np.load(killed_out / "index" / "features.npy"), np.load(fresh_out / "index" / "features.npy"))
    assert (killed_out / "pairs.csv").read_text() == (fresh_out / "pairs.csv").read_text()
