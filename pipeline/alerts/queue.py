"""`leadflow alerts queue`: a team's open work, read from a worker's /teams/{team}/queue."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import SecretStr

from pipeline.errors import WorkerUnreachable


def fetch_queue(base_url: str, team: str, *, token: SecretStr | None = None,
                timeout_s: float = 10.0) -> dict[str, Any]:
    """The queue document of `team` from the worker at `base_url` (any worker routes it).

    ``token`` (LEADFLOW_API_TOKEN) goes as a bearer token; a worker with none set ignores it.
    """
    url = f"{base_url.rstrip('/')}/teams/{urllib.parse.quote(team, safe='')}/queue"
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout_s) as resp:
            doc: dict[str, Any] = orjson.loads(resp.read())
            return doc
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        hint = (" (set LEADFLOW_API_TOKEN to the worker's token)" if exc.code == 401 and not token
                else " (LEADFLOW_API_TOKEN differs from the worker's)" if exc.code == 401
                else "")
        raise WorkerUnreachable(f"{url} answered {exc.code}: {detail}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WorkerUnreachable(
            f"no worker answered at {url} ({reason}); start one with `leadflow worker` "
            "or point --url at one") from None


def format_queue(doc: Mapping[str, Any]) -> list[str]:
    """Readable lines: waiting, unowned (with why), then owned alerts by due time."""
    lines = [f"team {doc['team']}: {len(doc['waiting'])} waiting for opening hours, "
             f"{len(doc['unowned'])} unowned, {len(doc['owned'])} owned and open"]
    for w in sorted(doc["waiting"], key=lambda i: i["due_at"]):
        lines.append(f"  waiting  {w['alert_id']}  lead {w['lead_id']}  {w['kind']}  "
                     f"since {w.get('since') or '?'}: {w.get('reason') or ''}")
    for u in sorted(doc["unowned"], key=lambda i: i["since"]):
        lines.append(f"  unowned  {u['alert_id']}  lead {u['lead_id']}  {u['kind']}  "
                     f"since {u['since']}: {u['reason']}")
    for o in sorted(doc["owned"], key=lambda i: i["due_at"]):
        lines.append(f"  owned    {o['alert_id']}  lead {o['lead_id']}  {o['kind']}  "
                     f"{o['owner']}, due {o['due_at']}")
    if doc.get("unowned_dropped"):
        lines.append(f"  ({doc['unowned_dropped']} older unowned alerts no longer kept)")
    return lines
