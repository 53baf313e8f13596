"""Losses that methods share."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_kl(student: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(target/T) ‖ softmax(student/T)), averaged over rows of logits.

    Logits may carry extra dimensions (``[batch, positions, classes]``); every
    position counts as one row.
    """
    classes = student.shape[-1]
    log_student = F.log_softmax(student.reshape(-1, classes).float() / temperature, dim=-1)
    log_target = F.log_softmax(target.reshape(-1, classes).float() / temperature, dim=-1)
    return F.kl_div(log_student, log_target, reduction="batchmean", log_target=True)
