"""Student distillation from the teacher-label store (Khani et al., RecSys 2024).

- :class:`TeacherJoin` (a batch transform) looks each batch's ``example_id`` up in a label
  version as batches stream and sets the training targets ``batch.targets["teacher_logit"]``
  and ``batch.targets["has_teacher"]``; nothing is loaded into per-row Python objects.
- :class:`AuxHeadCTRModel` adds an auxiliary head on the representation right below the
  tower's logit (:class:`~mdctr.platform.towers.Tower`'s ``return_hidden``). In training
  and in eval it returns :class:`StudentLogits` ``(served, aux)``; metrics, evaluation and
  serving read :func:`served_logits` only, so they never see the auxiliary head.
- :class:`DistillLoss` is the loss of either mode (see :class:`DistillConfig`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mdctr.domains.batching import Batch
from mdctr.platform.config import DistillConfig, ModelConfig, TrainConfig
from mdctr.platform.model import CTRModel, FeatureLayout
from mdctr.platform.stores.labels import LabelReader, TeacherLabelStore


class TeacherJoin:
    """Batch transform: teacher logits of the batch's examples (0 and unflagged when the
    version has no label for an example)."""

    def __init__(self, labels: LabelReader):
        self.labels = labels

    def __call__(self, batch: Batch) -> Batch:
        logits, found = self.labels.lookup(batch.example_id.numpy())
        targets = dict(batch.targets, teacher_logit=torch.from_numpy(logits), has_teacher=torch.from_numpy(found))
        return dataclasses.replace(batch, targets=targets)


class StudentLogits(NamedTuple):
    """A distillation student's output, in training and in eval alike."""

    served: torch.Tensor  # (B,) the logit metrics and serving use
    aux: torch.Tensor  # (B,) the auxiliary head's logit (learns the teacher's soft label)


def served_logits(output: torch.Tensor | StudentLogits) -> torch.Tensor:
    """The served logit of any model's output."""
    return output.served if isinstance(output, StudentLogits) else output


class AuxHeadCTRModel(CTRModel):
    """:class:`CTRModel` with an auxiliary logit head on the representation right below the
    tower's logit (``Tower.hidden_width`` wide)."""

    def __init__(self, layout: FeatureLayout, cfg: ModelConfig, device: torch.device | str = "meta", seed: int = 0):
        super().__init__(layout, cfg, device=device, seed=seed)
        self.aux_head = nn.Linear(self.tower.hidden_width, 1)

    def forward(self, sparse, dense: torch.Tensor, domain: torch.Tensor,
                inputs: dict[str, torch.Tensor] | None = None) -> StudentLogits:
        logit, hidden = self.head(self.pooled(sparse, domain), dense, return_hidden=True)
        return StudentLogits(logit, self.aux_head(hidden).squeeze(-1))


def build_student(layout: FeatureLayout, cfg: ModelConfig, distill: DistillConfig | None, seed: int) -> CTRModel:
    """The model of a run: with an auxiliary head when distilling in ``aux`` mode."""
    if distill is not None and distill.mode == "aux":
        return AuxHeadCTRModel(layout, cfg, seed=seed)
    return CTRModel(layout, cfg, seed=seed)


@dataclass(frozen=True)
class StudentBuilder:
    """Model builder of a job: :func:`build_student` for the config's ``distill`` section."""

    distill: DistillConfig | None = None

    def __call__(self, cfg: TrainConfig, layout: FeatureLayout) -> CTRModel:
        return build_student(layout, cfg.model, self.distill, cfg.train.seed)


@dataclass(frozen=True)
class TeacherLabels:
    """Transform builder of a job: joins a label version's teacher logits on the rank."""

    store: str
    version: str
    raw_fields: tuple[str, ...] = ()

    def __call__(self, layout: FeatureLayout) -> TeacherJoin:
        return TeacherJoin(LabelReader(TeacherLabelStore(self.store).resolve(self.version)))


@dataclass(frozen=True)
class DistillLoss:
    """The student's loss (hard BCE plus the teacher term) for ``cfg``'s mode."""

    cfg: DistillConfig

    def __call__(self, output: torch.Tensor | StudentLogits, batch: Batch) -> torch.Tensor:
        cfg = self.cfg
        logits = served_logits(output)
        has = batch.targets["has_teacher"].to(logits.dtype)
        soft = torch.sigmoid(batch.targets["teacher_logit"].to(logits.dtype) / cfg.temperature)
        if cfg.mode == "aux":
            hard = F.binary_cross_entropy_with_logits(logits, batch.labels)
            aux = F.binary_cross_entropy_with_logits(output.aux, soft, reduction="none")
            return hard + cfg.weight * (aux * has).sum() / has.sum().clamp(min=1.0)
        target = batch.labels + has * cfg.weight * (soft - batch.labels)
        return F.binary_cross_entropy_with_logits(logits, target)


def distill_loss(cfg: DistillConfig) -> DistillLoss:
    """``loss(logits, batch)`` for the student (hard BCE plus the teacher term)."""
    return DistillLoss(cfg)
