"""Load YAML into typed pydantic configs, with one-line errors naming the file and field.

Every YAML that mdctr reads (dataset.yaml, configs/*.yaml) goes through :func:`load_model`,
so unknown keys, wrong types and malformed YAML all fail the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mdctr.domains.errors import DataContractError

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
    return f"'{loc}': {first['msg']}"


#: libyaml's safe loader when PyYAML was built with it (~10x faster than the pure-Python one)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataContractError("file not found", file=path) from None
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise DataContractError(f"malformed YAML{where}: {problem}", file=path) from None


def parse_model(data: Any, model: type[M], *, source: str | Path) -> M:
    """Validate already-parsed data into ``model``; errors name ``source``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DataContractError(
            f"expected a mapping at the top level, got {type(data).__name__}", file=source
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise DataContractError(format_validation_error(err), file=source) from None


def load_model(path: str | Path, model: type[M]) -> M:
    """Read a YAML file into ``model``.

    Raises :class:`DataContractError` (a ``ValueError``) with one line naming the file
    for a missing file, malformed YAML, an unknown key or an invalid value.
    """
    return parse_model(read_yaml(path), model, source=path)


def dump_model(obj: BaseModel, path: str | Path) -> None:
    Path(path).write_text(
        yaml.safe_dump(obj.model_dump(mode="json", exclude_none=True), sort_keys=False)
    )
