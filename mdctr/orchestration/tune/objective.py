"""The objective of a study: train one trial's config and return its best validation score.

Each trial is an ordinary run (``ROOT/trial-NNNN``) of the config with the trial's values,
trained without its test split (a study never reads test rows). After every epoch the
trainer's hook reports the validation score to the trial; when the pruner says so the
run stops after that epoch and the trial is pruned. The objective takes any Optuna trial,
so ``optuna.trial.FixedTrial`` runs it in tests without a study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mdctr.core.errors import ConfigError
from mdctr.orchestration.tune.space import apply, check_space, suggest
from mdctr.platform.config import TrainConfig
from mdctr.platform.job import TrainerHooks

log = logging.getLogger("mdctr.tune")

#: objective name -> the epoch record's key
METRICS = {"valid_wauc": "valid_wauc", "valid_auc": "valid_auc", "valid_logloss": "valid_logloss"}


@dataclass
class PruningHooks(TrainerHooks):
    """Reports every epoch's validation score to the trial; stops the run when it should be
    pruned (``pruned`` is then True)."""

    trial: object
    metric: str
    pruned: bool = False
    #: epochs reported so far: the steps of a run of several phases (MLoRA's pretraining,
    #: then its adapters) follow each other
    steps: int = 0

    def on_epoch_end(self, epoch: int, metrics: dict, checkpoint: Path | None) -> bool:
        value = metrics.get(self.metric)
        if value is None:
            return False
        self.trial.report(float(value), self.steps)
        self.steps += 1
        self.trial.set_user_attr("epochs", self.steps)
        if self.trial.should_prune():
            self.pruned = True
            return True
        return False


class Objective:
    """``objective(trial) -> float``: the best epoch's validation score of the trial's run.

    Args:
        cfg: the config with its ``tune:`` section (the space, the objective).
        root: where the trials' run directories go.
    """

    def __init__(self, cfg: TrainConfig, root: str | Path):
        self.cfg, self.root = cfg, Path(root)
        self.space = check_space(cfg)
        self.metric = METRICS[cfg.tune.objective]
        if not cfg.train.validation:
            raise ConfigError("train.validation: a study needs the validation split (its objective)")

    def __call__(self, trial) -> float:
        import optuna

        from mdctr.adapters.run import train

        params = suggest(trial, self.space)
        cfg = apply(self.cfg, params)
        number = getattr(trial, "number", 0)
        out = self.root / f"trial-{number:04d}"
        trial.set_user_attr("run_dir", str(out))
        hooks = PruningHooks(trial, self.metric)  # one curve: the splits' epochs one after another
        seeds = self.cfg.tune.split_seeds
        values = []
        for seed in seeds or [None]:
            run_dir = out if seed is None else out / f"split-{seed}"
            metrics = train(cfg, run_dir, hooks=hooks, test=False, split_seed=seed)
            if hooks.pruned:
                raise optuna.TrialPruned(f"pruned after {trial.user_attrs.get('epochs', '?')} epochs")
            if metrics.get(self.metric) is None:
                raise ValueError(f"the run reported no {self.metric}")
            values.append(float(metrics[self.metric]))
        if seeds:
            trial.set_user_attr("split_values", dict(zip(map(str, seeds), values)))
        return sum(values) / len(values)
