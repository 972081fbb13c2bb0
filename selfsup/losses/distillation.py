"""Self-distillation loss of DINO (Caron et al. 2021, arXiv 2104.14294)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .clustering import swapped_cross_entropy

__all__ = ["dino_loss"]


def dino_loss(
    student_outputs: Sequence[torch.Tensor],
    teacher_outputs: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """DINO's cross-entropy between the centered, sharpened teacher and the student (eq. 1-3,
    algorithm 1, and ``DINOLoss`` of the official code).

    ``student_outputs[v]`` ``(B, K)`` are the student's head outputs for every view (the global
    views first); ``teacher_outputs[i]`` ``(B, K)`` the teacher's for the global views, teacher
    view ``i`` being student view ``i``. With ``P_t = softmax((t - center) / teacher_temperature)``
    (no gradient) and ``log P_s = log_softmax(s / student_temperature)``::

        L = 1/|pairs| sum_{i, v != i} -1/B sum_b sum_k P_t(teacher_outputs[i])[b, k] log P_s(student_outputs[v])[b, k]

    Pairs where the student and the teacher see the same view are skipped. Computed in float32
    whatever the input dtype: softmax over K sharpened logits is where bf16 training turns to NaN.
    """
    if len(teacher_outputs) > len(student_outputs) or len(student_outputs) < 2:
        raise ValueError(
            f"need >= 2 student views and at most one teacher view per student view, got "
            f"{len(student_outputs)} and {len(teacher_outputs)}"
        )
    with torch.autocast(device_type=student_outputs[0].device.type, enabled=False):
        center = center.detach().float()
        targets = torch.stack([F.softmax((t.detach().float() - center) / teacher_temperature, dim=-1) for t in teacher_outputs])
        # The student never predicts the teacher's output for the same view.
        return swapped_cross_entropy(targets, student_outputs, student_temperature)
