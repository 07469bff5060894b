"""Records of the rules topic: decoding, which one is the latest, what publishing refuses."""

from __future__ import annotations

import orjson
import pytest

from pipeline.core.rules import parse_rules
from pipeline.errors import RulesRefused
from pipeline.published_rules import Broken, check_publish, decode, latest, message
from tests.support.published import AT, TOPIC, record, revised


def test_a_published_record_decodes_to_the_same_rules() -> None:
    got = record(3, offset=7, mql=55)
    assert (got.offset, got.revision, got.rules.mql) == (7, 3, 55)
    assert got.rules.version == parse_rules(revised(3, 55)).version == got.message.rules_version


def test_revision_changes_the_version() -> None:
    assert parse_rules(revised(1)).version != parse_rules(revised(2)).version


@pytest.mark.parametrize(("value", "says"), [
    (None, "leadflow.rules[0]@4: empty record"),
    (b"{not json", "leadflow.rules[0]@4: not JSON"),
    (b'{"revision": 1}', "leadflow.rules[0]@4: source: Field required"),
])
def test_a_record_that_is_not_a_published_rules_message_is_broken(
        value: bytes | None, says: str) -> None:
    got = decode(TOPIC, 4, value)
    assert isinstance(got, Broken) and got.offset == 4
    assert any(p.startswith(says) for p in got.problems), got.problems


def test_invalid_rules_in_a_record_name_every_problem_and_the_record() -> None:
    good = message(parse_rules(revised(2)), revised(2), "r.yaml", AT).to_dict()
    bad = {**good, "source": revised(2).replace("    points: 35\n", "    points: lots\n")
           .replace("  hot: 90 ", "  hot: hot ", 1)}
    got = decode(TOPIC, 9, orjson.dumps(bad))
    assert isinstance(got, Broken)
    assert len(got.problems) == 2
    assert all(p.startswith("leadflow.rules[0]@9 (r.yaml):") for p in got.problems)
    assert any("(id: purchase).points" in p for p in got.problems)
    assert any("thresholds.hot" in p for p in got.problems)


def test_latest_is_the_highest_valid_revision_and_the_last_of_equals() -> None:
    a, b, c = record(1, 0), record(3, 1), record(3, 2, mql=55)
    broken = Broken(3, ("x",))
    assert latest([a, b, c, broken, record(2, 4)]) is c
    assert latest([broken]) is None
    assert latest([]) is None


def test_publishing_refuses_a_revision_that_goes_backwards() -> None:
    current = record(3)
    older = parse_rules(revised(2))
    with pytest.raises(RulesRefused) as err:
        check_publish(older, current)
    msg = str(err.value)
    assert f"revision 2 (rules version {older.version}) goes backwards" in msg
    assert f"revision 3 (rules version {current.rules.version})" in msg


def test_publishing_refuses_other_rules_under_the_published_revision() -> None:
    with pytest.raises(RulesRefused, match="revision 3 is already published with other"):
        check_publish(parse_rules(revised(3, mql=55)), record(3))


def test_publishing_the_same_rules_again_is_nothing_to_do() -> None:
    assert check_publish(parse_rules(revised(3)), record(3)) is False
    assert check_publish(parse_rules(revised(4)), record(3)) is True
    assert check_publish(parse_rules(revised(0)), None) is True
