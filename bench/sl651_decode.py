"""SL651 decode throughput on one core: frames per second for typical reports.

Run: .venv/bin/python bench/sl651_decode.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import platform
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial

from grassroots.irrigation.telemetry.sl651 import (
    Frame,
    FrameScanner,
    SeriesValue,
    StationClass,
    decode_frame,
    encode_report,
    parse_report,
    reading,
)

STATION = "0012345678"
REPEATS = 10
AT = datetime(2026, 3, 10, 1, 30, tzinfo=UTC)


def timed_report() -> bytes:
    """A timed report (32) with eight elements, the common case on an irrigation canal."""
    values = [
        reading(0x39, "3.215"), reading(0x3A, "2.870"), reading(0x3B, "3.410"),
        reading(0x09, "0.45"), reading(0x27, "1.250"), reading(0x20, "12.5"),
        reading(0x10, "23.4"), reading(0x38, "12.61"),
    ]
    return encode_report(station=STATION, function=0x32, serial=1, sent_at=AT,
                         station_class=StationClass.GATE_DAM, observed_at=AT, values=values)


def hourly_report() -> bytes:
    """An hourly report (34): 5-minute rain and level series plus totals."""
    step = timedelta(minutes=5)
    first = AT - 11 * step
    rain = SeriesValue(0xF4, "rain_5min_mm", "mm", first, step,
                       tuple(Decimal(i) / 10 for i in range(12)))
    level = SeriesValue(0xF5, "water_level_relative_1_m", "m", first, step,
                        tuple(Decimal(300 + i) / 100 for i in range(12)))
    return encode_report(station=STATION, function=0x34, serial=2, sent_at=AT,
                         station_class=StationClass.RIVER, observed_at=AT,
                         values=[reading(0x26, "1234.5"), reading(0x39, "3.120"),
                                 reading(0x38, "12.60")], series=[rain, level])


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``work``: the best of several short runs totalling ``seconds``.

    The best run, not the mean, because on a shared machine noise only ever slows a run.
    """
    per_call = min(timeit.repeat(work, number=1, repeat=3)) or 1e-6
    number = max(1, int(seconds / REPEATS / per_call))
    return number / min(timeit.repeat(work, number=number, repeat=REPEATS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row")
    args = parser.parse_args()
    rows = []
    for name, raw in (("timed report, 8 elements", timed_report()),
                      ("hourly report, 2 series", hourly_report())):
        frame = decode_frame(raw)
        stream = raw * 50

        def scan(stream: bytes = stream) -> None:
            for item in FrameScanner().feed(stream):
                if isinstance(item, Frame):
                    parse_report(item)

        def both(raw: bytes = raw) -> None:
            parse_report(decode_frame(raw))

        rows += [
            (name, len(raw), "decode_frame", rate(partial(decode_frame, raw), args.seconds)),
            (name, len(raw), "parse_report", rate(partial(parse_report, frame), args.seconds)),
            (name, len(raw), "decode + parse", rate(both, args.seconds)),
            (name, len(raw), "scanner + parse (x50 stream)", 50 * rate(scan, args.seconds)),
        ]
    print(f"Python {platform.python_version()} on {platform.machine()}, one core\n")
    print(f"{'report':<26} {'bytes':>5}  {'stage':<30} {'frames/s':>12}")
    for name, size, stage, per_second in rows:
        print(f"{name:<26} {size:>5}  {stage:<30} {per_second:>12,.0f}")


if __name__ == "__main__":
    main()
