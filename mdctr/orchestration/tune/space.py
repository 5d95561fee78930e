"""A train config's ``tune:`` section: the search space by dotted config paths, checked
against the config before any trial runs, and sampled from an Optuna trial.

.. code-block:: yaml

    tune:
      trials: 24
      space:
        optim.dense.lr: {float: [1.0e-4, 1.0e-2], log: true}
        model.hidden: {categorical: [[256, 128], [512, 256], [128, 64]]}
        train.batch_size: {int: [256, 2048], step: 256}
        adapters.alpha: {categorical: [4, 8, 16]}

Every path must name a setting of the config (an unknown one, a value of the wrong type or
an empty range is one :class:`~mdctr.core.errors.ConfigError` line naming
``tune.space.<path>``): each bound and each choice is applied to the config and validated.
"""

from __future__ import annotations

import json
from typing import Any

from mdctr.core.config import with_overrides
from mdctr.core.errors import ConfigError
from mdctr.platform.config import ParamSpec, TrainConfig


def _values(spec: ParamSpec) -> list[Any]:
    """The values that stand for the spec's range when checking it against the config."""
    if spec.categorical is not None:
        return list(spec.categorical)
    return list(spec.float_range if spec.float_range is not None else spec.int_range)


def check_space(cfg: TrainConfig) -> dict[str, ParamSpec]:
    """The config's space, every path and value checked against the config itself."""
    if cfg.tune is None or not cfg.tune.space:
        raise ConfigError("tune.space: the config declares no search space (a tune: section with space:)")
    base = cfg.model_copy(update={"tune": None})
    for path, spec in cfg.tune.space.items():
        if path.split(".")[0] in ("tune", "data", "resources"):
            raise ConfigError(f"tune.space.{path}: '{path.split('.')[0]}' cannot be tuned")
        for value in _values(spec):
            try:
                with_overrides(base, {path: value}, source=f"tune.space.{path}")
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{path}: {value!r} does not fit the config "
                                  f"({' '.join(str(exc).split())[:200]})") from None
    return dict(cfg.tune.space)


def suggest(trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """One value per path from an Optuna trial (``optuna.trial.FixedTrial`` works too)."""
    params: dict[str, Any] = {}
    for path, spec in space.items():
        if spec.float_range is not None:
            lo, hi = spec.float_range
            params[path] = trial.suggest_float(path, lo, hi, log=spec.log, step=spec.step)
        elif spec.int_range is not None:
            lo, hi = spec.int_range
            params[path] = trial.suggest_int(path, lo, hi, log=spec.log, step=int(spec.step or 1))
        else:
            # Optuna's choices must be scalars: a list (e.g. hidden sizes) by its JSON text
            labels = {c if _scalar(c) else json.dumps(c): c for c in spec.categorical}
            params[path] = labels[trial.suggest_categorical(path, list(labels))]
    return params


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def apply(cfg: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The config with a trial's values, without its ``tune:`` section (a config that
    ``mdctr train`` takes as it is)."""
    return with_overrides(cfg.model_copy(update={"tune": None}), params, source="a trial's parameters")
