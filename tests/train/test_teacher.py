"""How the teacher follows the student in each variant (paper, Fig. 6): the momentum EMA, a copy
of the current student, the student of the previous iteration, the student of the previous epoch;
the teacher keeps its own BatchNorm statistics in all of them, and has no predictor."""

import pytest
import torch

from dinossl.config import load_config
from dinossl.objective import StepValues
from dinossl.runtime.distributed import DistContext
from dinossl.train import build_distiller
from dinossl.train.teacher import TeacherUpdate
from tests.conftest import TINY_OVERRIDES

BATCH = 4
VALUES = StepValues(lr=1e-2, weight_decay=0.04, momentum=0.9, teacher_temp=0.04, freeze_last_layer=False)


def _distiller(*overrides):
    config = load_config("vit-tiny-cifar", overrides=[*TINY_OVERRIDES, "model.depth=1", "model.drop_path=0",
                                                      "model.use_bn_in_head=true", *overrides])
    return build_distiller(config, DistContext(0, 1, 0, torch.device("cpu")), num_teacher_views=2)


def _crops(seed):
    generator = torch.Generator().manual_seed(seed)
    return ([torch.randn(BATCH, 3, 32, 32, generator=generator) for _ in range(2)]
            + [torch.randn(BATCH, 3, 16, 16, generator=generator) for _ in range(2)])


def _params(network):
    return {name: p.detach().clone() for name, p in network.named_parameters()}


def _assert_teacher_equals(teacher, params):
    for name, value in teacher.named_parameters():
        assert torch.equal(value, params[name]), name


def test_student_teacher_equals_the_student_after_each_step():
    distiller = _distiller("optim.teacher_update=student")
    for step in range(3):
        distiller.step(_crops(step), VALUES)
        _assert_teacher_equals(distiller.teacher, _params(distiller.student))


def test_previous_iteration_teacher_is_the_student_one_step_behind():
    distiller = _distiller("optim.teacher_update=previous_iteration")
    before = _params(distiller.student)
    for step in range(3):
        distiller.step(_crops(step), VALUES)
        _assert_teacher_equals(distiller.teacher, before)  # the student as it entered this step
        after = _params(distiller.student)
        assert not torch.equal(after["head.mlp.0.weight"], before["head.mlp.0.weight"])
        before = after


def test_previous_epoch_teacher_is_frozen_until_the_epoch_ends():
    distiller = _distiller("optim.teacher_update=previous_epoch")
    initial = _params(distiller.teacher)
    for step in range(3):
        distiller.step(_crops(step), VALUES)
        _assert_teacher_equals(distiller.teacher, initial)
    distiller.end_epoch()
    boundary = _params(distiller.student)
    _assert_teacher_equals(distiller.teacher, boundary)
    distiller.step(_crops(9), VALUES)
    _assert_teacher_equals(distiller.teacher, boundary)


def test_ema_teacher_with_a_predictor_on_the_student():
    distiller = _distiller("model.predictor=true")
    assert distiller.teacher.predictor is None and distiller.student.predictor is not None
    teacher_before = _params(distiller.teacher)
    distiller.step(_crops(0), VALUES)
    student = _params(distiller.student)
    for name, value in distiller.teacher.named_parameters():
        torch.testing.assert_close(value, 0.9 * teacher_before[name] + 0.1 * student[name], rtol=1e-6, atol=1e-7)
    distiller.end_epoch()  # nothing happens at an epoch's end
    for name, value in distiller.teacher.named_parameters():
        torch.testing.assert_close(value, 0.9 * teacher_before[name] + 0.1 * student[name], rtol=1e-6, atol=1e-7)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.predictor.parameters())


@pytest.mark.parametrize("kind", ["ema", "student", "previous_iteration", "previous_epoch"])
def test_every_teacher_keeps_its_own_batchnorm_statistics(kind):
    distiller = _distiller(f"optim.teacher_update={kind}")
    for step in range(2):
        distiller.step(_crops(step), VALUES)
    distiller.end_epoch()
    teacher, student = distiller.teacher.state_dict(), distiller.student.state_dict()
    assert int(teacher["head.mlp.1.num_batches_tracked"]) == 2  # one teacher forward per step
    for name in ("head.mlp.1.running_mean", "head.mlp.4.running_var"):
        initial = torch.zeros_like(teacher[name]) if "mean" in name else torch.ones_like(teacher[name])
        assert not torch.allclose(teacher[name], initial)  # its own forwards moved them
        assert not torch.allclose(teacher[name], student[name])  # the student's never copied


def test_unknown_teacher_update():
    with pytest.raises(ValueError, match="frozen"):
        TeacherUpdate("frozen")
