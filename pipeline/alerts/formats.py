"""What `leadflow alerts forward` posts: the alert as it is (`json`), or a message people
read in a chat channel (`slack`, Slack's incoming-webhook payload: `text` plus blocks).

Pure: an alert document in, a payload out. The message names the lead, why it is hot (its
top reasons), its owner and when the SLA lapses; like the alert itself it holds personal
data (the lead's name and e-mail) and is meant for the team's own channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Format = Literal["json", "slack"]
FORMATS: tuple[Format, ...] = ("json", "slack")

_KIND = {"instant": "asked for sales", "hot_score": "hot score", "pql": "product-qualified",
         "review": "needs review", "nurture": "nurture", "recycle": "recycled"}


def _who(alert: Mapping[str, Any]) -> str:
    lead = alert.get("lead") or {}
    name = lead.get("name") or lead.get("email") or alert.get("lead_id", "?")
    title, company = lead.get("title"), lead.get("company")
    at = ", ".join(str(x) for x in (title, company) if x)
    return f"{name} ({at})" if at else str(name)


def _reasons(alert: Mapping[str, Any], n: int = 3) -> str:
    parts = []
    for r in (alert.get("top_reasons") or [])[:n]:
        count = f" x{r['count']}" if r.get("count") else ""
        parts.append(f"{r['rule']} {float(r['points']):+g}{count}")
    return ", ".join(parts) or "no scoring rule recorded"


def slack_message(alert: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook payload for one routing alert."""
    kind = _KIND.get(str(alert.get("kind")), str(alert.get("kind")))
    total = float((alert.get("scores") or {}).get("total", 0.0))
    owner = alert.get("owner")
    due = alert.get("due_at")
    who = _who(alert)
    again = " (reassigned: the SLA lapsed)" if alert.get("reassigned") else ""
    head = f"{'Hot lead' if alert.get('temperature') == 'hot' else 'Lead'} for " \
           f"{alert.get('team', '?')}: {who}, {kind}, score {total:g}{again}"
    owner_line = f"Owner: {owner}" if owner else "Owner: nobody yet (in the team queue)"
    sla_line = f"acknowledge by {due}" if due else "no SLA"
    email = (alert.get("lead") or {}).get("email")
    fields = [f"*Why:* {_reasons(alert)}", f"*{owner_line}*, {sla_line}"]
    if email:
        fields.append(f"*Contact:* {email}")
    return {
        "text": f"{head}. {owner_line}; {sla_line}.",  # notifications and plain clients
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{head}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(fields)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text":
                f"alert {alert.get('alert_id')} - lead {alert.get('lead_id')} - ack with "
                f"`leadflow alerts ack {alert.get('alert_id')}`"}]},
        ],
    }
