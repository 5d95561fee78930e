"""Calendar helpers shared by windows, stages and the cadence (UTC days).

>>> day_ts(date(1998, 3, 2)) - day_ts(date(1998, 3, 1)) == DAY
True
>>> iso_day(day_ts(date(1998, 3, 2)))
'1998-03-02'
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta

from mdctr.core.errors import ConfigError

#: seconds in a day
DAY = 86_400


def day_ts(day: date) -> int:
    """Seconds since the epoch at 00:00 UTC of ``day``."""
    return calendar.timegm(day.timetuple())


def iso_day(ts: int) -> str:
    """The UTC date of ``ts`` (seconds) as ``YYYY-MM-DD``."""
    return (date(1970, 1, 1) + timedelta(seconds=int(ts))).isoformat()


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def parse_date(text: str, what: str = "--date") -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what}: expected YYYY-MM-DD, got {text!r}") from None
