"""Knowledge distillation loss (Hinton, Vinyals, Dean, 2015) with softened outputs."""

import torch
import torch.nn.functional as F

__all__ = ['distillation_loss']


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(p_teacher || p_student), p = softmax(logits / T), averaged over the batch.

    The T^2 factor keeps the gradient scale independent of T. The teacher is detached: knowledge flows from
    teacher to student only.
    """
    if temperature <= 0:
        raise ValueError(f'distillation_loss: temperature={temperature} must be positive.')
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction='batchmean', log_target=True)
    return temperature**2 * kl
