"""Load YAML into typed pydantic configs, with one-line errors naming the file and field.

Every YAML that mdctr reads (dataset.yaml, configs/*.yaml, run and stage configs) goes
through :func:`load_model`, so unknown keys, wrong types and malformed YAML all fail the
same way: an :class:`~mdctr.core.errors.InputError` (by default a
:class:`~mdctr.core.errors.ConfigError`) naming the file and key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mdctr.core.errors import ConfigError, InputError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def format_validation_error(err: ValidationError) -> str:
    """First problem of a pydantic error as ``field.path: message``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{loc}'"
    if first["type"] == "missing":
        return f"missing key '{loc}'"
    msg = first["msg"].removeprefix("Value error, ")
    return f"'{loc}': {msg}" if first["loc"] else msg


#: libyaml's safe loader when PyYAML was built with it (~10x faster than the pure-Python one)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str | Path, *, error: type[InputError] = ConfigError) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error("file not found", file=path) from None
    except (IsADirectoryError, NotADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise error(f"cannot read ({type(exc).__name__})", file=path) from None
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise error(f"malformed YAML{where}: {problem}", file=path) from None


def parse_model(data: Any, model: type[M], *, source: str | Path, error: type[InputError] = ConfigError) -> M:
    """Validate already-parsed data into ``model``; errors name ``source``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"expected a mapping at the top level, got {type(data).__name__}", file=source)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise error(format_validation_error(err), file=source) from None


def load_model(path: str | Path, model: type[M], *, error: type[InputError] = ConfigError) -> M:
    """Read a YAML file into ``model``.

    Raises ``error`` (an :class:`InputError`) with one line naming the file for a missing
    file, malformed YAML, an unknown key or an invalid value.
    """
    return parse_model(read_yaml(path, error=error), model, source=path, error=error)


def dump_model(obj: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(obj.model_dump(mode="json", exclude_none=True), sort_keys=False))


def with_overrides(cfg: M, overrides: dict[str, Any], *, source: str = "command line") -> M:
    """``cfg`` with dotted-path values replaced (``{"train.seed": 3}``), validated again;
    an invalid value is a :class:`ConfigError` naming the key."""
    data = cfg.model_dump()
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown key '{dotted}'", file=source)
            node = node[p]
        node[leaf] = value
    return parse_model(data, type(cfg), source=source)
