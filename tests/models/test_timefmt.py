from datetime import UTC, datetime, timedelta, timezone

import pytest

from pipeline.models.timefmt import iso_offset, iso_z, parse_iso

MS = 1_796_025_600_000  # 2026-11-30T08:00:00Z


def test_both_spellings_of_utc() -> None:
    assert iso_offset(MS) == "2026-11-30T08:00:00.000+00:00"
    assert iso_z(MS + 5) == "2026-11-30T08:00:00.005Z"


def test_datetimes_are_written_in_utc_naive_ones_taken_as_utc() -> None:
    paris = datetime(2026, 11, 30, 9, tzinfo=timezone(timedelta(hours=1)))
    assert iso_z(paris) == iso_z(datetime(2026, 11, 30, 8)) == iso_z(MS)


def test_parse_reads_what_both_write() -> None:
    want = datetime(2026, 11, 30, 8, tzinfo=UTC)
    assert parse_iso(iso_z(MS)) == parse_iso(iso_offset(MS)) == want
    assert parse_iso("2026-11-30T08:00:00") == want
    with pytest.raises(ValueError):
        parse_iso("yesterday")


def test_milliseconds_are_written_the_same_however_often_asked() -> None:
    # every millisecond of two seconds, twice over (the second time from the memo), the
    # same text as through a datetime (whatever /1000 rounds to)
    for _ in range(2):
        for ms in range(MS - 1000, MS + 1000):
            dt = datetime.fromtimestamp(ms / 1000, UTC)
            assert iso_offset(ms) == dt.isoformat(timespec="milliseconds") == iso_offset(dt)
            assert iso_z(ms) == iso_z(dt) == iso_offset(dt).replace("+00:00", "Z")
