"""Typed training config: what ``configs/*.yaml`` holds for ``mdctr train``.

Every section is a pydantic model with unknown keys forbidden, so a typo fails at load with
one line naming the file and key. Example (``configs/movielens_gender_shared.yaml``)::

    data: movielens-100k:gender      # a dataset directory or NAME:SPLIT of a built-in one
    baseline: shared                 # shared | shared_domain_feature | separate
    model: {tower: mlp, embedding_dim: 16, hidden: [256, 128]}
    optim:
      embedding: {type: rowwise_adagrad, lr: 0.05}
      dense: {type: adam, lr: 0.001}
    train: {epochs: 30, batch_size: 1024, patience: 3, seed: 0}
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mdctr.core.config import StrictModel, dump_model, load_model
from mdctr.core.timeutil import day_ts
from mdctr.domains.selection import Selection


class Baseline(str, Enum):
    shared = "shared"
    shared_domain_feature = "shared_domain_feature"
    separate = "separate"


class ModelConfig(StrictModel):
    tower: Literal["mlp", "dcnv2", "deepfm", "finalmlp"] = "mlp"
    #: the sparse and multi-hot fields the model embeds (default: every one of the data)
    fields: list[str] | None = None
    #: feed the data's dense features to the tower
    use_dense: bool = True
    embedding_dim: int = Field(default=16, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [256, 128])
    #: after every hidden layer, or one value per hidden layer
    dropout: float | list[float] = 0.0
    activation: Literal["relu", "gelu", "silu"] = "relu"
    #: table rows = min(field cardinality, max_table_rows) unless table_rows names the field
    max_table_rows: int = Field(default=1_000_000, ge=1)
    table_rows: dict[str, int] = {}
    #: DCNv2 cross layers and the rank of their low-rank weights
    cross_layers: int = Field(default=3, ge=1)
    cross_rank: int = Field(default=32, ge=1)
    #: FinalMLP: heads of the bilinear fusion of its two streams (must divide the last
    #: hidden width; each head pairs H / heads units of one stream with the other's)
    fusion_heads: int = Field(default=1, ge=1)
    #: FinalMLP: gate each stream's input by 2 * sigmoid(Linear(input)), its own gate per stream
    feature_gating: bool = True

    @model_validator(mode="after")
    def _hidden(self) -> "ModelConfig":
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError("model.hidden must list positive layer widths")
        rates = self.dropout if isinstance(self.dropout, list) else [self.dropout]
        if isinstance(self.dropout, list) and len(rates) != len(self.hidden):
            raise ValueError(f"model.dropout lists {len(rates)} rates for {len(self.hidden)} hidden layers")
        if any(not 0 <= r < 1 for r in rates):
            raise ValueError("model.dropout rates must be in [0, 1)")
        if any(v < 1 for v in self.table_rows.values()):
            raise ValueError("model.table_rows values must be >= 1")
        if self.tower == "finalmlp" and self.hidden[-1] % self.fusion_heads:
            raise ValueError(f"model.fusion_heads ({self.fusion_heads}) must divide the last hidden width "
                             f"model.hidden[-1] ({self.hidden[-1]})")
        return self


class EmbeddingOptim(StrictModel):
    """The fused (in-backward, fbgemm) optimizer of the embedding tables."""

    type: Literal["sgd", "adagrad", "rowwise_adagrad", "adam"] = "rowwise_adagrad"
    lr: float = Field(default=0.05, gt=0)
    eps: float = Field(default=1e-8, gt=0)
    #: L2 on the rows of a batch (rowwise_adagrad), decoupled (adam); fbgemm's sgd and
    #: adagrad have none
    weight_decay: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _decay(self) -> "EmbeddingOptim":
        if self.weight_decay and self.type in ("sgd", "adagrad"):
            raise ValueError(f"weight_decay: fbgemm's {self.type} kernel has no weight decay "
                             "(use rowwise_adagrad or adam)")
        return self


class DenseOptim(StrictModel):
    type: Literal["adam", "adamw", "sgd", "adagrad"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


class OptimConfig(StrictModel):
    embedding: EmbeddingOptim = EmbeddingOptim()
    dense: DenseOptim = DenseOptim()


class LRScheduleConfig(StrictModel):
    """``train.lr_schedule``: one scale on every learning rate (dense and embedding tables)."""

    #: linear warm-up over the first epochs' batches (from lr / warm-up batches to lr)
    warmup_epochs: int = Field(default=0, ge=0)
    #: after the warm-up: ``cosine`` to ``min_scale`` by the last epoch; ``plateau`` times
    #: ``factor`` after every epoch that does not improve validation WAUC
    decay: Literal["none", "cosine", "plateau"] = "none"
    factor: float = Field(default=0.1, gt=0, lt=1)
    min_scale: float = Field(default=0.0, ge=0, le=1)


class AverageConfig(StrictModel):
    """``train.average``: epoch weight averaging (as stochastic weight averaging, Izmailov et al.,
    2018, over epochs). When training stops, the weights after every epoch from ``from_epoch``
    (as the logs number epochs) to the last are averaged, tables and dense layers alike; the
    average is validated and becomes the run's model if its validation WAUC beats the best
    epoch's (with ``train.validation`` off: always). Early stopping is unchanged, so the
    epochs past the best (``patience`` of them) are averaged too. Every averaged epoch's
    checkpoint stays on disk until the average is made."""

    from_epoch: int = Field(default=1, ge=0)


class TimeWindow(StrictModel):
    """Only rows with ``start <= ts < end`` (UTC days, ``end`` excluded; either side open),
    e.g. a student that trains on the last weeks only: ``train.window: {start: 1998-03-01}``.
    The split (random or temporal) then divides the window's rows."""

    start: date | None = None
    end: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "TimeWindow":
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"window: start {self.start} must precede end {self.end}")
        return self

    def bounds(self) -> tuple[int | None, int | None]:
        """The window in seconds since the epoch, as :class:`~mdctr.domains.selection.Selection` takes it."""
        return (None if self.start is None else day_ts(self.start), None if self.end is None else day_ts(self.end))


class TrainLoopConfig(StrictModel):
    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    eval_batch_size: int = Field(default=8192, ge=1)
    #: epochs without a better validation WAUC before stopping
    patience: int = Field(default=2, ge=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    #: L2 on the embeddings a training batch looks up: adds ``embedding_l2`` times the mean
    #: squared norm of an example's pooled embeddings to the loss (every device and optimizer)
    embedding_l2: float = Field(default=0.0, ge=0)
    seed: int = Field(default=0, ge=0)
    split_kind: Literal["random", "temporal"] = "random"
    split_seed: int | None = Field(default=None, ge=0)
    #: train and evaluate on these domains only (default: every domain of the data)
    domains: list[str] | None = None
    #: train and evaluate on the rows of this time window only (default: every row)
    window: TimeWindow | None = None
    #: background batches prepared ahead of the model (0: none)
    prefetch: int = Field(default=1, ge=0)
    #: validate each epoch and keep the best (early stopping); False trains ``epochs``
    #: epochs and keeps the last (for tiny, frequent windows with no room for a hold-out)
    validation: bool = True
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    #: average the weights of the last epochs into the model (off: the best epoch's weights)
    average: AverageConfig | None = None
    #: ``bfloat16``: mixed precision. The forward pass of training runs under
    #: ``torch.autocast(bfloat16)``: the tower's matrix products in bfloat16; weights, tables,
    #: optimizer state, the loss and the gradients' accumulation in float32. Validation,
    #: test, labels and exports run float32. Fast on CPUs with bfloat16 instructions
    #: (AVX512-BF16, AMX) and on GPUs that support it; elsewhere slower than ``float32``.
    precision: Literal["float32", "bfloat16"] = "float32"

    def selection(self) -> Selection:
        """The rows this loop trains and evaluates on (split, domains, window)."""
        return Selection(self.split_kind, self.split_seed, None if self.domains is None else tuple(self.domains),
                         None if self.window is None else self.window.bounds())

    @model_validator(mode="after")
    def _plateau_needs_validation(self) -> "TrainLoopConfig":
        if self.lr_schedule.decay == "plateau" and not self.validation:
            raise ValueError("lr_schedule.decay: plateau needs validation (train.validation is false)")
        return self

    @field_validator("domains")
    @classmethod
    def _unique_domains(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            dup = next((d for i, d in enumerate(v) if d in v[:i]), None)
            if dup is not None:
                raise ValueError(f"domain '{dup}' is listed twice")
        return v


class DistillConfig(StrictModel):
    """Learn from a teacher's labels in the teacher-label store (``mdctr labels write``).

    ``aux``: the served logit learns the hard label; an auxiliary head on the representation
    right below it (``Tower.hidden_width``) learns ``sigmoid(teacher_logit / temperature)``
    with weight ``weight``.
    ``direct``: the served logit learns ``(1 - weight) * label + weight * soft``. Rows the
    teacher did not label learn the hard label only.
    """

    #: a label version name, or "latest"
    teacher_labels: str = "latest"
    #: with "latest": the newest version whose labelled data ends before this date
    labels_before: date | None = None
    #: the teacher-label store directory
    store: str = "runs/labels"
    mode: Literal["aux", "direct"] = "aux"
    weight: float = Field(default=0.5, ge=0)
    temperature: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _direct_weight(self) -> "DistillConfig":
        if self.mode == "direct" and self.weight > 1:
            raise ValueError("distill.weight must be <= 1 in direct mode (it mixes the two labels)")
        return self


class ResourcesConfig(StrictModel):
    """Where the ranks run (data only; the CLI picks the launcher). ``workers`` > 1 trains on
    that many Ray Train workers (the run's world size); ``max_failures``: worker-group
    restarts allowed, each resuming from the last checkpoint."""

    workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    max_failures: int = Field(default=0, ge=0)


class ParamSpec(StrictModel):
    """One dimension of a search space (``tune.space``): exactly one of ``float: [lo, hi]``,
    ``int: [lo, hi]`` (inclusive; ``log`` samples the logarithm, ``step`` a grid) or
    ``categorical: [choices]``."""

    model_config = ConfigDict(populate_by_name=True)

    float_range: tuple[float, float] | None = Field(default=None, alias="float")
    int_range: tuple[int, int] | None = Field(default=None, alias="int")
    categorical: list[Any] | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> "ParamSpec":
        kinds = [k for k, v in (("float", self.float_range), ("int", self.int_range),
                                ("categorical", self.categorical)) if v is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of float, int, categorical (got {kinds or 'none'})")
        bounds = self.float_range or self.int_range
        if bounds is not None:
            if not bounds[0] < bounds[1]:
                raise ValueError(f"empty range {list(bounds)}")
            if self.log and bounds[0] <= 0:
                raise ValueError(f"a log range must be positive, got {list(bounds)}")
            if self.log and self.step is not None:
                raise ValueError("log and step exclude each other")
        elif not self.categorical:
            raise ValueError("categorical: no choices")
        elif self.log or self.step is not None:
            raise ValueError("log and step apply to float and int ranges only")
        return self


class TunePruner(StrictModel):
    """``median``: stop a trial whose validation score after an epoch is below the median of
    earlier trials' at that epoch (after ``startup_trials`` trials and ``warmup_epochs``)."""

    type: Literal["median", "none"] = "median"
    startup_trials: int = Field(default=3, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)


class TuneConfig(StrictModel):
    """``mdctr tune``'s settings: the space (dotted config paths) and the study."""

    space: dict[str, ParamSpec] = {}
    trials: int = Field(default=20, ge=1)
    #: the validation metric a study optimises (test rows are never read during a study)
    objective: Literal["valid_wauc", "valid_auc", "valid_logloss"] = "valid_wauc"
    #: default: maximize AUC/WAUC, minimize log loss
    direction: Literal["maximize", "minimize"] | None = None
    #: the TPE sampler's seed
    seed: int = Field(default=0, ge=0)
    #: score every trial on these random splits (the mean of their best validation scores),
    #: so the study does not fit one split's validation rows; default: the config's split
    split_seeds: list[int] | None = Field(default=None, min_length=1)
    pruner: TunePruner = TunePruner()

    @field_validator("split_seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError("split seeds must be distinct and >= 0")
        return v


class TrainConfig(StrictModel):
    data: str
    baseline: Baseline = Baseline.shared
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainLoopConfig = TrainLoopConfig()
    distill: DistillConfig | None = None
    world_size: int = Field(default=1, ge=1)
    resources: ResourcesConfig = ResourcesConfig()
    #: the search space of ``mdctr tune`` (not part of a run's settings)
    tune: TuneConfig | None = None

    def fingerprint(self) -> str:
        """Short hash of the resolved config (identifies a run's settings). ``resources``
        (where the ranks run) and ``tune`` are left out; the world size, which changes the
        result, is in."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"resources", "tune"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_train_config(path: str | Path) -> TrainConfig:
    return load_model(path, TrainConfig)


def save_train_config(cfg: TrainConfig, path: str | Path) -> None:
    dump_model(cfg, path)
