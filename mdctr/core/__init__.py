"""Below everything: the strict config base and YAML loader, the :class:`InputError`
hierarchy, atomic directory commits and JSON/table output, cache and state directories,
calendar helpers. Imports nothing else of mdctr."""

from mdctr.core.config import StrictModel, dump_model, load_model, parse_model, read_yaml, with_overrides
from mdctr.core.errors import ArtifactError, ConfigError, DataContractError, InputError, RunDirError
from mdctr.core.io import atomic_dir, cache_dir, check_output, commit_dir, format_table, state_dir, write_json
from mdctr.core.timeutil import DAY, day_ts, iso_day, month_of, parse_date

__all__ = [
    "ArtifactError", "ConfigError", "DAY", "DataContractError", "InputError", "RunDirError", "StrictModel",
    "atomic_dir", "cache_dir", "check_output", "commit_dir", "day_ts", "dump_model", "format_table", "iso_day",
    "load_model", "month_of", "parse_date", "parse_model", "read_yaml", "state_dir", "with_overrides",
    "write_json",
]
