"""Turning caller time series (aware datetimes or datetime64, floats with gaps) into arrays."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

# Times travel as integer microseconds since the Unix epoch (UTC) so that sorting, windowing and
# gap boundaries stay exact; arithmetic on them is done in float seconds relative to a window.
US_PER_S = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TimesLike = Sequence[datetime] | npt.NDArray[np.datetime64]
ValuesLike = Sequence[float | None] | npt.NDArray[np.floating]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def to_us(value: datetime) -> int:
    """Microseconds since the epoch of one aware datetime; a naive one is refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} is naive; pass aware (UTC) datetimes")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def from_us(value: int | np.integer) -> datetime:
    """The aware UTC datetime for microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=int(value))


def td_us(value: timedelta) -> int:
    """A timedelta in whole microseconds."""
    return (value.days * 86_400 + value.seconds) * US_PER_S + value.microseconds


def times_to_us(times: TimesLike) -> IntArray:
    """Times as int64 microseconds since the epoch; datetime64 arrays are read as UTC."""
    if isinstance(times, np.ndarray) and np.issubdtype(times.dtype, np.datetime64):
        return times.astype("datetime64[us]").astype(np.int64)
    return np.fromiter((to_us(t) for t in times), dtype=np.int64, count=len(times))


def values_to_float(values: ValuesLike) -> FloatArray:
    """Values as float64 with None (unavailable) turned into NaN."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def as_series(times: TimesLike, values: ValuesLike) -> tuple[IntArray, FloatArray]:
    """Both arrays, checked to be the same length."""
    t = times_to_us(times)
    v = values_to_float(values)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError(f"times and values differ in shape: {t.shape} vs {v.shape}")
    return t, v


def clean_sorted(t: IntArray, v: FloatArray) -> tuple[IntArray, FloatArray]:
    """Available readings only (finite values), sorted by time, duplicates averaged."""
    keep = np.isfinite(v)
    t, v = t[keep], v[keep]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if t.size > 1 and np.any(t[1:] == t[:-1]):
        # A report resent with the same timestamp (telemetry retries) must not count twice.
        unique_t, inverse = np.unique(t, return_inverse=True)
        sums = np.bincount(inverse, weights=v)
        counts = np.bincount(inverse)
        return unique_t, sums / counts
    return t, v
