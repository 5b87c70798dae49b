"""Time helpers: Prague local time (CET/CEST) without relying on the host's tz database."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone


def _last_sunday(year: int, month: int) -> date:
    d = date(year, month, 31)
    return d - timedelta(days=(d.weekday() + 1) % 7)


def prague_offset_minutes(utc: datetime) -> int:
    """EU rule: summer time from 01:00 UTC on the last Sunday of March to that of October."""
    y = utc.year
    start = datetime.combine(_last_sunday(y, 3), datetime.min.time(), timezone.utc) + timedelta(hours=1)
    end = datetime.combine(_last_sunday(y, 10), datetime.min.time(), timezone.utc) + timedelta(hours=1)
    return 120 if start <= utc < end else 60


def local_to_utc(day: date, hour: int, minute: int, second: int) -> datetime:
    naive = datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=timezone.utc)
    # the offset an hour either side of a switch is ambiguous; mail at 2-3 am is spam anyway
    return naive - timedelta(minutes=prague_offset_minutes(naive))


def working_time(rng: random.Random, day: date) -> datetime:
    """A moment in office hours (07:30-18:00 local), weighted to the morning."""
    minutes = int(450 + min(rng.random(), rng.random()) * 630)
    return local_to_utc(day, minutes // 60, minutes % 60, rng.randrange(60))


def any_time(rng: random.Random, day: date) -> datetime:
    s = rng.randrange(86400)
    return local_to_utc(day, s // 3600, (s // 60) % 60, s % 60)


def is_workday(day: date) -> bool:
    return day.weekday() < 5


def count(rng: random.Random, rate: float) -> int:
    """A whole number of events with mean `rate` (integer part plus a Bernoulli remainder)."""
    whole = int(rate)
    return whole + (1 if rng.random() < rate - whole else 0)
