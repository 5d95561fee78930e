"""Environment variables set for a scope and restored afterwards.

>>> import os
>>> with scoped_env({"MDCTR_DOCTEST_VAR": "1"}):
...     os.environ["MDCTR_DOCTEST_VAR"]
'1'
>>> "MDCTR_DOCTEST_VAR" in os.environ
False
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block; restore (or remove) them after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
