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
