"""Losses that methods and task types share.

Sequence losses take logits ``[batch, tokens, vocabulary]`` aligned with ``labels``
``[batch, tokens]`` (``logits[:, t]`` predicts ``labels[:, t]``; ``IGNORE`` marks
padding and prompt tokens). They go in fp32 over chunks of examples of at most
``CHUNK_ELEMENTS`` logits (one example at a time for a real vocabulary), each chunk
under activation checkpointing when gradients flow, so that no fp32 copy of a large
``[batch, tokens, vocabulary]`` tensor is ever made or kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
CHUNK_ELEMENTS = 1 << 22  # 16 MiB of fp32 logits


def distill_kl(student: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(target/T) ‖ softmax(student/T)), averaged over rows of logits.

    Logits may carry extra dimensions (``[batch, positions, classes]``); every
    position counts as one row.
    """
    classes = student.shape[-1]
    log_student = F.log_softmax(student.reshape(-1, classes).float() / temperature, dim=-1)
    log_target = F.log_softmax(target.reshape(-1, classes).float() / temperature, dim=-1)
    return F.kl_div(log_student, log_target, reduction="batchmean", log_target=True)


def _per_row(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn`` over chunks of examples (rows of the batch), each checkpointed when gradients flow and the batch is split."""
    logits = tensors[0]
    rows = max(1, CHUNK_ELEMENTS // max(1, logits[0].numel()))
    if rows >= len(logits):
        return fn(*tensors)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    chunks = [tuple(t[i:i + rows] for t in tensors) for i in range(0, len(logits), rows)]
    return torch.cat([checkpoint(fn, *chunk, use_reentrant=False) if grad else fn(*chunk) for chunk in chunks])


def _row_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, labels.clamp_min(0)[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) at every position, ``[batch, tokens]`` in fp32; 0 where the label is ``IGNORE``."""
    return _per_row(_row_logprobs, logits, labels) * (labels != IGNORE)


def example_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(target | input) per example, ``[batch]``: log p(label) for class logits ``[batch, classes]``, the sum over
    the target tokens for token logits ``[batch, tokens, vocabulary]``."""
    logprobs = label_logprobs(logits, labels)
    return logprobs if logprobs.dim() == 1 else logprobs.flatten(1).sum(1)


def target_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of logits that predict a target (``labels`` not ``IGNORE``) in fp32, ``[N, classes]``, and those targets."""
    keep = labels != IGNORE
    return logits[keep].float(), labels[keep]


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example mean NLL over its target tokens, ``[batch]`` (0 for an example without any)."""
    mask = labels != IGNORE
    return -label_logprobs(logits, labels).sum(1) / mask.sum(1).clamp_min(1)


def token_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T)) per target token (``labels`` not ``IGNORE``), averaged over those tokens."""
    def row(s, t):
        log_s = F.log_softmax(s.float() / temperature, dim=-1)
        log_t = F.log_softmax(t.float() / temperature, dim=-1)
        return (log_t.exp() * (log_t - log_s)).sum(-1)

    mask = labels != IGNORE
    return (_per_row(row, student, teacher) * mask).sum() / mask.sum().clamp_min(1)
