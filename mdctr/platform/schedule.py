"""Learning-rate schedules (``train.lr_schedule``): linear warm-up, then cosine decay or a
cut on each epoch that does not improve validation WAUC (reduce on plateau).

Every learning rate the job trains with (the dense optimizer's and the embedding tables'
fused fbgemm optimizer's) is its configured value times one scale. The scale is a pure
function of the step and of the epoch history, so a resumed run continues exactly as the
uninterrupted one did:

>>> from mdctr.platform.config import LRScheduleConfig
>>> s = LRScheduleConfig(warmup_epochs=1, decay="cosine", min_scale=0.1)
>>> [round(lr_scale(s, epoch=e, step=i, steps_per_epoch=2, epochs=3, history=[]), 3)
...  for e in (0, 1, 2) for i in (0, 1)]
[0.5, 1.0, 1.0, 0.868, 0.55, 0.232]
>>> p = LRScheduleConfig(decay="plateau", factor=0.5)
>>> hist = [{"epoch": 0, "valid_wauc": 0.70}, {"epoch": 1, "valid_wauc": 0.69}, {"epoch": 2, "valid_wauc": 0.71}]
>>> lr_scale(p, epoch=3, step=0, steps_per_epoch=10, epochs=8, history=hist)
0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from mdctr.platform.config import LRScheduleConfig


def plateaus(history: Sequence[dict]) -> int:
    """Epochs of ``history`` after the first whose validation WAUC did not beat every
    earlier one."""
    best, cuts = -math.inf, 0
    for i, record in enumerate(history):
        wauc = record.get("valid_wauc")
        wauc = -math.inf if wauc is None else wauc
        if wauc > best:
            best = wauc
        elif i > 0:
            cuts += 1
    return cuts


def lr_scale(cfg: LRScheduleConfig, *, epoch: int, step: int, steps_per_epoch: int, epochs: int,
             history: Sequence[dict]) -> float:
    """The scale of every learning rate at batch ``step`` of training epoch ``epoch``
    (0-based among the ``epochs`` trained ones)."""
    done = epoch * steps_per_epoch + step  # batches before this one
    warm = cfg.warmup_epochs * steps_per_epoch
    if done < warm:
        return (done + 1) / warm
    if cfg.decay == "cosine":
        span = max(epochs * steps_per_epoch - warm, 1)
        progress = min((done - warm) / span, 1.0)
        return cfg.min_scale + (1 - cfg.min_scale) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.decay == "plateau":
        return max(cfg.factor ** plateaus(history), cfg.min_scale)
    return 1.0


class LRSchedule:
    """Sets the scaled learning rates on optimizer parameter groups (plain and fused ones:
    fbgemm's fused optimizer reads its group's ``lr`` on its next ``zero_grad``/``step``)."""

    def __init__(self, cfg: LRScheduleConfig, groups: Iterable[dict], *, steps_per_epoch: int, epochs: int):
        self.cfg, self.steps_per_epoch, self.epochs = cfg, max(steps_per_epoch, 1), epochs
        self.groups = list(groups)
        self.base = [g["lr"] for g in self.groups]
        self.scale: float | None = None  # none set yet (a resumed optimizer may hold any lr)

    @property
    def active(self) -> bool:
        return self.cfg.warmup_epochs > 0 or self.cfg.decay != "none"

    def set(self, *, epoch: int, step: int, history: Sequence[dict]) -> bool:
        """Apply the scale of this step (training epoch ``epoch``, 0-based); True when it
        changed."""
        scale = lr_scale(self.cfg, epoch=epoch, step=step, steps_per_epoch=self.steps_per_epoch,
                         epochs=self.epochs, history=history)
        if scale == self.scale:
            return False
        self.scale = scale
        for group, base in zip(self.groups, self.base):
            group["lr"] = base * scale
        return True
