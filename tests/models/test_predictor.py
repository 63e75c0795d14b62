"""The predictor ablation: a BN + GELU MLP on the student's head output only."""

import torch
from torch import nn

from dinossl.config import ModelConfig
from dinossl.models import Predictor, build_network

CONFIG = ModelConfig(arch="vit_tiny", patch_size=8, img_size=32, depth=1, out_dim=40, head_hidden_dim=24,
                     head_bottleneck_dim=8, predictor=True)


def test_layers_shapes_and_initialisation():
    torch.manual_seed(0)
    predictor = Predictor(40, 24)
    linear1, norm, act, linear2 = predictor.mlp
    assert isinstance(norm, nn.BatchNorm1d) and isinstance(act, nn.GELU)
    assert linear1.weight.shape == (24, 40) and linear2.weight.shape == (40, 24)
    assert torch.all(linear1.bias == 0) and 0.017 < linear1.weight.std().item() < 0.023
    x = torch.randn(5, 40)
    expected = linear2(act(norm(linear1(x))))
    predictor.train()
    torch.testing.assert_close(predictor(x), expected)


def test_only_the_student_has_one_and_it_is_applied_to_the_head_output():
    torch.manual_seed(1)
    student, teacher = build_network(CONFIG, student=True), build_network(CONFIG, student=False)
    assert isinstance(student.predictor, Predictor) and teacher.predictor is None
    assert any(k.startswith("predictor.") for k in student.state_dict())
    assert not any(k.startswith("predictor.") for k in teacher.state_dict())
    # The student's backbone and head keys are exactly the teacher's, in the same order.
    assert [k for k in student.state_dict() if not k.startswith("predictor.")] == list(teacher.state_dict())
    crops = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)]
    student.eval()
    out = student(crops)
    torch.testing.assert_close(out, student.predictor(student.head(student.backbone(torch.cat(crops)))))
    assert out.shape == (6, 40)
    without = build_network(ModelConfig(**{**CONFIG.__dict__, "predictor": False}), student=True)
    assert without.predictor is None
