"""Working hours: calendars, business-hours SLA, skip reasons and validation errors."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError

from pipeline.core.calendar import closed_until, sla_due
from pipeline.core.routing import Rep, Team, assign


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


UTC_TEAM = Team(name="t", timezone="UTC", hours={"mon-fri": "09:00-17:00"},
                reps=(Rep(id="a"),))


def test_friday_evening_sla_is_due_monday() -> None:
    assert sla_due(UTC_TEAM, ms("2026-12-04T17:00:00+00:00"), 3_600_000) \
        == ms("2026-12-07T10:00:00+00:00")


def test_wall_clock_team_ignores_hours() -> None:
    team = UTC_TEAM.model_copy(update={"sla_clock": "wall_clock"})
    assert sla_due(team, ms("2026-12-04T17:00:00+00:00"), 3_600_000) \
        == ms("2026-12-04T18:00:00+00:00")


def test_dst_change_week_keeps_local_opening() -> None:
    # Berlin leaves CEST on Sunday 2026-10-25: Monday 09:00 local is 08:00Z, not 07:00Z.
    team = Team(name="b", timezone="Europe/Berlin", hours={"mon-fri": "09:00-17:00"})
    due = sla_due(team, ms("2026-10-23T16:30:00+02:00"), 3_600_000)
    assert due == ms("2026-10-26T08:30:00+00:00")


def test_rep_outside_hours_skipped_and_next_chosen() -> None:
    team = Team(name="e", reps=(
        Rep(id="rep-lena", timezone="Europe/Berlin", hours={"mon-fri": "09:00-17:30"}),
        Rep(id="rep-bo", timezone="America/New_York", hours={"mon-fri": "09:00-17:00"})))
    # 18:00 Berlin is 12:00 in New York (December: UTC+1 and UTC-5).
    _, a = assign(team, None, domain=None, at_ms=ms("2026-12-02T17:00:00+00:00"))
    assert a.owner == "rep-bo"
    assert a.skipped == ("rep-lena: outside working hours "
                         "(Europe/Berlin mon-fri 09:00-17:30)",)


def test_away_rep_skipped() -> None:
    team = Team(name="e", reps=(Rep(id="x", away=[{"from": "2026-12-24", "to": "2027-01-02"}]),
                                Rep(id="y")))
    _, a = assign(team, None, domain=None, at_ms=ms("2027-01-02T23:00:00+00:00"))
    assert (a.owner, a.skipped) == ("y", ("x: away 2026-12-24 to 2027-01-02",))
    _, b = assign(team, None, domain=None, at_ms=ms("2027-01-03T00:00:00+00:00"))
    assert b.owner == "x"


def test_team_closed_until_next_opening() -> None:
    assert closed_until(UTC_TEAM, ms("2026-12-05T12:00:00+00:00")) \
        == ms("2026-12-07T09:00:00+00:00")
    assert closed_until(UTC_TEAM, ms("2026-12-07T09:00:00+00:00")) is None


@pytest.mark.parametrize(("rep", "message"), [
    ({"id": "r", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"id": "r", "hours": {"mon": "25:00-26:00"}}, "malformed time '25:00'"),
    ({"id": "r", "hours": {"mon": "17:00-09:00"}}, "end before they start"),
    ({"id": "r", "hours": {"mon-fri": "09:00-12:00", "fri": "11:00-13:00"}},
     "overlapping hours on fri"),
    ({"id": "r", "away": [{"from": "2027-01-02", "to": "2026-12-24"}]}, "ends (2026-12-24)"),
])
def test_bad_calendar_is_a_validation_error(rep: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Rep.model_validate(rep)
