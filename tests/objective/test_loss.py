import math

import pytest
import torch
import torch.nn.functional as F

from dinossl.objective import DINOLoss


def direct_loss(student, teacher, center, student_temp, teacher_temp, batch):
    """Textbook DINO loss: mean over (teacher view i, student view v != i) of H(P_t(i), P_s(v))."""
    s_views = student.chunk(student.shape[0] // batch)
    t_views = teacher.chunk(2)
    total, pairs = 0.0, 0
    for i, t in enumerate(t_views):
        p_t = F.softmax((t - center) / teacher_temp, dim=-1)
        for v, s in enumerate(s_views):
            if v == i:
                continue
            total = total + torch.sum(-p_t * F.log_softmax(s / student_temp, dim=-1), dim=-1).mean()
            pairs += 1
    return total / pairs, pairs


@pytest.mark.parametrize("num_views", [2, 3, 6])
def test_loss_matches_direct_computation(num_views):
    torch.manual_seed(0)
    batch, dim = 5, 11
    student = torch.randn(num_views * batch, dim)
    teacher = torch.randn(2 * batch, dim)
    loss_fn = DINOLoss(dim, student_temp=0.1)
    loss_fn.center.copy_(torch.randn(1, dim))
    center = loss_fn.center.clone()
    loss, _ = loss_fn(student, teacher, teacher_temp=0.04, update_center=False)
    expected, pairs = direct_loss(student, teacher, center, 0.1, 0.04, batch)
    assert pairs == 2 * num_views - 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_same_view_pairs_are_skipped():
    """Including the (i, i) pairs would give a different number: make those pairs dominant."""
    torch.manual_seed(1)
    batch, dim = 4, 7
    teacher = torch.randn(2 * batch, dim) * 3
    # student global views equal the teacher's (cheap pairs), locals are random (costly pairs)
    student = torch.cat([teacher, torch.randn(2 * batch, dim) * 3])
    loss_fn = DINOLoss(dim, student_temp=0.1)
    loss, _ = loss_fn(student, teacher, teacher_temp=0.1, update_center=False)
    expected, _ = direct_loss(student, teacher, torch.zeros(1, dim), 0.1, 0.1, batch)
    torch.testing.assert_close(loss, expected)
    all_pairs = 0.0
    for i in range(2):
        p_t = F.softmax(teacher.chunk(2)[i] / 0.1, dim=-1)
        for s in student.chunk(4):
            all_pairs += torch.sum(-p_t * F.log_softmax(s / 0.1, dim=-1), dim=-1).mean()
    assert not torch.allclose(loss, all_pairs / 8)


def test_gradient_flows_to_student_only():
    torch.manual_seed(2)
    student = torch.randn(8, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    loss, _ = DINOLoss(5)(student, teacher, teacher_temp=0.04)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_center_update_uses_old_center_for_the_loss_then_ema():
    torch.manual_seed(3)
    dim, batch = 6, 3
    loss_fn = DINOLoss(dim, center_momentum=0.9)
    old_center = torch.randn(1, dim)
    loss_fn.center.copy_(old_center)
    student, teacher = torch.randn(2 * batch, dim), torch.randn(2 * batch, dim)
    loss, _ = loss_fn(student, teacher, teacher_temp=0.05)
    expected, _ = direct_loss(student, teacher, old_center, 0.1, 0.05, batch)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss_fn.center, 0.9 * old_center + 0.1 * teacher.mean(dim=0, keepdim=True))


def test_center_starts_at_zero_and_converges_to_constant_teacher_mean():
    loss_fn = DINOLoss(4, center_momentum=0.5)
    assert torch.equal(loss_fn.center, torch.zeros(1, 4))
    teacher = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    for _ in range(40):
        loss_fn.update_center(teacher)
    torch.testing.assert_close(loss_fn.center, teacher.mean(0, keepdim=True))


def test_diagnostics_entropy_and_kl():
    torch.manual_seed(4)
    batch, dim, views = 3, 9, 4
    student, teacher = torch.randn(views * batch, dim), torch.randn(2 * batch, dim)
    loss, stats = DINOLoss(dim)(student, teacher, teacher_temp=0.07, update_center=False)
    p_t = F.softmax(teacher / 0.07, dim=-1).chunk(2)
    entropy = torch.stack([(-(p * p.log()).sum(-1)).mean() for p in p_t]).mean()
    kls = []
    for i in range(2):
        for v, s in enumerate(student.chunk(views)):
            if v != i:
                log_q = F.log_softmax(s / 0.1, dim=-1)
                kls.append((p_t[i] * (p_t[i].log() - log_q)).sum(-1).mean())
    torch.testing.assert_close(stats["teacher_entropy"], entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["kl"], torch.stack(kls).mean(), rtol=1e-4, atol=1e-5)
    assert 0 < stats["teacher_entropy"] < math.log(dim)


def test_rejects_logits_that_are_not_whole_views():
    with pytest.raises(ValueError):
        DINOLoss(5)(torch.randn(7, 5), torch.randn(4, 5), teacher_temp=0.04)
