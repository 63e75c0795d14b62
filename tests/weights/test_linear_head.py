"""Linear heads: written and read back, the reference's layout (DDP keys, interleaved
[CLS]/mean-patch columns) converted, and strict one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dinossl.errors import CheckpointError
from dinossl.outputs import weights_label
from dinossl.weights.linear_head import LinearHead, read_linear_head, write_linear_head


def test_a_written_head_reads_back_with_its_features_and_record(tmp_path):
    head = LinearHead(torch.randn(3, 8), torch.randn(3), 2, False, {"classes": ["a", "b", "c"], "epoch": 4})
    tensors, record = write_linear_head(tmp_path, head)
    assert json.loads(record.read_text())["n_last_blocks"] == 2
    for source in (tmp_path, tensors):
        back = read_linear_head(source)
        assert torch.equal(back.weight, head.weight) and torch.equal(back.bias, head.bias)
        assert (back.n_last_blocks, back.avgpool, back.info["classes"], back.info["epoch"]) == (2, False,
                                                                                              ["a", "b", "c"], 4)
    with pytest.raises(CheckpointError, match="trained on features with avgpool=False, not True"):
        read_linear_head(tmp_path, avgpool=True)


def test_reference_columns_are_reordered_for_avgpool_only(tmp_path):
    weight = torch.arange(12.0).reshape(2, 6)  # columns: cls0 avg0 cls1 avg1 cls2 avg2
    torch.save({"state_dict": {"module.linear.weight": weight, "module.linear.bias": torch.zeros(2)}},
               tmp_path / "ref.pth")
    pooled = read_linear_head(tmp_path / "ref.pth", 1, True)
    assert pooled.weight.tolist() == [[0, 2, 4, 1, 3, 5], [6, 8, 10, 7, 9, 11]]  # cls0 cls1 cls2 avg0 avg1 avg2
    assert torch.equal(read_linear_head(tmp_path / "ref.pth", 4, False).weight, weight)
    with pytest.raises(CheckpointError, match="n_last_blocks=1 only"):
        read_linear_head(tmp_path / "ref.pth", 2, True)


def test_files_that_are_not_linear_heads_are_refused(tmp_path):
    save_file({"linear.weight": torch.zeros(2, 3)}, tmp_path / "half.safetensors")
    with pytest.raises(CheckpointError, match=r"not a linear head \(missing: linear.bias\)"):
        read_linear_head(tmp_path / "half.safetensors")
    save_file({"linear.weight": torch.zeros(2, 3), "linear.bias": torch.zeros(3)}, tmp_path / "shape.safetensors")
    with pytest.raises(CheckpointError, match="not a \\(classes, features\\) layer"):
        read_linear_head(tmp_path / "shape.safetensors")
    with pytest.raises(CheckpointError, match="holds no linear_head.safetensors"):
        read_linear_head(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_linear_head(tmp_path / "absent.safetensors")


def test_hf_hub_sources_name_default_folders_by_their_repository():
    assert weights_label("hf-hub:timm/vit_small_patch16_224.dino") == "vit_small_patch16_224.dino"
    assert weights_label("hf-hub:facebook/dino-vits16@main") == "dino-vits16_main"
