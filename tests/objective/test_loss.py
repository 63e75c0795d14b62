import math

import pytest
import torch
import torch.nn.functional as F

from dinossl.objective import DINOLoss
from dinossl.objective.centering import sinkhorn_knopp_log


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


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
@pytest.mark.parametrize("num_views", [2, 3, 10])
def test_gradient_matches_autograd_of_the_textbook_loss_in_float64(num_views, centering):
    """The loss's hand-written gradient equals autograd through the textbook loss (float64) to
    float32 rounding, scaled by the upstream gradient, with or without same-view pairs."""
    torch.manual_seed(9)
    batch, dim = 4, 300
    student = (torch.randn(num_views * batch, dim) * 0.3).requires_grad_()
    teacher = torch.randn(2 * batch, dim) * 0.3
    loss_fn = DINOLoss(dim, student_temp=0.1, centering=centering)
    loss_fn.center.copy_(torch.randn(1, dim) * 0.1)
    loss, _ = loss_fn(student, teacher, teacher_temp=0.04, update_center=False)
    (2.5 * loss).backward()

    student64 = student.detach().double().requires_grad_()
    if centering == "ema":
        target = F.softmax((teacher.double() - loss_fn.center.double()) / 0.04, dim=-1).chunk(2)
    else:
        target = sinkhorn_knopp_log(teacher / 0.04).exp().double().chunk(2)
    total, pairs = 0.0, 0
    for i in range(2):
        for v, s in enumerate(student64.chunk(num_views)):
            if v != i:
                total = total + torch.sum(-target[i] * F.log_softmax(s / 0.1, dim=-1), dim=-1).mean()
                pairs += 1
    (2.5 * total / pairs).backward()
    torch.testing.assert_close(loss.double(), total / pairs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.grad.double(), student64.grad, rtol=1e-4, atol=1e-7)


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


# --------------------------------------------------------------------------------------------
# Ablations: the MSE criterion, Sinkhorn-Knopp and no centering, 0 local crops
# --------------------------------------------------------------------------------------------


def direct_mse(student, teacher, p_teacher_of, student_temp, batch):
    """Mean over (teacher view i, student view v != i) of the batch-mean squared distance between
    the L2-normalised softmax(student / student_temp) of view v and P_t of view i."""
    s_views = student.chunk(student.shape[0] // batch)
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher.chunk(2)):
        target = p_teacher_of(i)
        target = target / target.norm(dim=-1, keepdim=True)
        for v, s in enumerate(s_views):
            if v == i:
                continue
            p_s = F.softmax(s / student_temp, dim=-1)
            p_s = p_s / p_s.norm(dim=-1, keepdim=True)
            total = total + ((p_s - target) ** 2).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("num_views", [2, 4])
def test_mse_loss_matches_direct_computation(num_views):
    torch.manual_seed(5)
    batch, dim = 4, 9
    student = torch.randn(num_views * batch, dim, requires_grad=True)
    teacher = torch.randn(2 * batch, dim)
    loss_fn = DINOLoss(dim, student_temp=0.1, criterion="mse")
    loss_fn.center.copy_(torch.randn(1, dim))
    center = loss_fn.center.clone()
    loss, stats = loss_fn(student, teacher, teacher_temp=0.04)
    p_t = F.softmax((teacher - center) / 0.04, dim=-1).chunk(2)
    expected = direct_mse(student, teacher, lambda i: p_t[i], 0.1, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert student.grad.abs().sum() > 0
    # The diagnostics stay the entropy of P_t and the KL to P_s, whatever the criterion.
    ce, _ = direct_loss(student.detach(), teacher, center, 0.1, 0.04, batch)
    entropy = torch.stack([(-torch.special.xlogy(p, p).sum(-1)).mean() for p in p_t]).mean()
    torch.testing.assert_close(stats["kl"], ce - entropy, rtol=1e-4, atol=1e-5)
    # The center still follows the teacher (EMA centering is independent of the criterion).
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * teacher.mean(0, keepdim=True))


def test_mse_of_identical_distributions_is_zero():
    batch, dim = 3, 5
    teacher = torch.randn(2 * batch, dim)
    # Student views 0 and 1 swapped: every pair (i, v != i) with v a global view compares
    # identical distributions when the temperatures agree and no center is applied.
    student = torch.cat([teacher[batch:], teacher[:batch]])
    loss, _ = DINOLoss(dim, student_temp=0.1, criterion="mse", centering="none")(student, teacher, teacher_temp=0.1)
    torch.testing.assert_close(loss, torch.zeros(()), rtol=0, atol=1e-6)


def test_no_centering_ignores_and_keeps_the_center():
    torch.manual_seed(6)
    batch, dim = 3, 7
    student, teacher = torch.randn(3 * batch, dim), torch.randn(2 * batch, dim)
    loss_fn = DINOLoss(dim, centering="none")
    loss_fn.center.copy_(torch.randn(1, dim))
    center = loss_fn.center.clone()
    loss, _ = loss_fn(student, teacher, teacher_temp=0.04)
    expected, _ = direct_loss(student, teacher, torch.zeros(1, dim), 0.1, 0.04, batch)
    torch.testing.assert_close(loss, expected)
    assert torch.equal(loss_fn.center, center)


def test_sinkhorn_target_over_both_teacher_views():
    torch.manual_seed(7)
    batch, dim = 5, 6
    student, teacher = torch.randn(4 * batch, dim), torch.randn(2 * batch, dim)
    loss_fn = DINOLoss(dim, centering="sinkhorn", sinkhorn_iterations=3)
    loss, stats = loss_fn(student, teacher, teacher_temp=0.5)
    # Restated: alternate column (prototype) and row (sample) normalisation of exp(t / tau) over
    # the 2B teacher samples, 3 times; then the usual cross-entropy with that target.
    q = torch.exp(teacher / 0.5)
    for _ in range(3):
        q = q / q.sum(dim=0, keepdim=True)
        q = q / q.sum(dim=1, keepdim=True)
    s_views = student.chunk(4)
    total = 0.0
    for i, target in enumerate(q.chunk(2)):
        for v, s in enumerate(s_views):
            if v != i:
                total = total + torch.sum(-target * F.log_softmax(s / 0.1, dim=-1), dim=-1).mean()
    torch.testing.assert_close(loss, total / 6, rtol=1e-5, atol=1e-6)
    entropy = (-(q * q.log()).sum(-1)).mean()
    torch.testing.assert_close(stats["teacher_entropy"], entropy, rtol=1e-5, atol=1e-6)
    assert torch.equal(loss_fn.center, torch.zeros(1, dim))  # the EMA center is not used


def test_two_global_crops_and_no_local_crop():
    """2 x 224 without local crops: 2 pairs, (teacher 0, student 1) and (teacher 1, student 0)."""
    torch.manual_seed(8)
    batch, dim = 4, 8
    student, teacher = torch.randn(2 * batch, dim), torch.randn(2 * batch, dim)
    for criterion in ("cross_entropy", "mse"):
        loss, _ = DINOLoss(dim, criterion=criterion)(student, teacher, teacher_temp=0.04, update_center=False)
        p_t = F.softmax(teacher / 0.04, dim=-1).chunk(2)
        s = student.chunk(2)
        if criterion == "cross_entropy":
            pairs = [torch.sum(-p_t[0] * F.log_softmax(s[1] / 0.1, -1), -1).mean(),
                     torch.sum(-p_t[1] * F.log_softmax(s[0] / 0.1, -1), -1).mean()]
        else:
            def unit(x):
                return x / x.norm(dim=-1, keepdim=True)
            pairs = [((unit(F.softmax(s[1] / 0.1, -1)) - unit(p_t[0])) ** 2).sum(-1).mean(),
                     ((unit(F.softmax(s[0] / 0.1, -1)) - unit(p_t[1])) ** 2).sum(-1).mean()]
        torch.testing.assert_close(loss, (pairs[0] + pairs[1]) / 2, rtol=1e-5, atol=1e-6)


def test_unknown_criterion_or_centering():
    with pytest.raises(ValueError):
        DINOLoss(5, criterion="l1")
    with pytest.raises(ValueError):
        DINOLoss(5, centering="median")
