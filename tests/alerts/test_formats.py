"""The Slack message `leadflow alerts forward --format slack` posts for an alert."""

from __future__ import annotations

from pipeline.alerts.formats import slack_message
from tests.support.alerts import make_alert


def test_slack_message_says_who_why_owner_and_sla() -> None:
    alert = make_alert("a-1", "lead-7", lead={"email": "ada@acme.example", "name": "Ada L",
                                              "title": "VP Sales", "company": "Acme"})
    msg = slack_message(alert)
    assert msg["text"] == ("Hot lead for sales: Ada L (VP Sales, Acme), asked for sales, score "
                           "85. Owner: alice; acknowledge by 2024-05-02T10:20:00Z.")
    head, body, ctx = msg["blocks"]
    assert head["text"]["text"] == "*Hot lead for sales: Ada L (VP Sales, Acme), asked for " \
                                   "sales, score 85*"
    assert body["text"]["text"].splitlines() == [
        "*Why:* demo_request +50 x1, pricing_page +30 x3",
        "*Owner: alice*, acknowledge by 2024-05-02T10:20:00Z",
        "*Contact:* ada@acme.example"]
    assert ctx["elements"][0]["text"].endswith("`leadflow alerts ack a-1`")


def test_an_unowned_reassigned_alert_without_sla_says_so() -> None:
    alert = make_alert("a-2", "lead-8", owner=None, reassigned=True, due_at=None,
                       kind="hot_score", lead={}, top_reasons=[])
    text = slack_message(alert)["text"]
    assert text == ("Hot lead for sales: lead-8, hot score, score 85 (reassigned: the SLA "
                    "lapsed). Owner: nobody yet (in the team queue); no SLA.")
