"""The `quixstreams` system of the end-to-end benchmark; runs in its own venv.

    .leadflow/bench/quix-venv/bin/python benchmarks/quix_system.py --bootstrap H:P \
        --group G --topics t1,t2,... --out latencies.json --state-dir DIR [--commit-interval S]

Per-lead scoring with Quix Streams' state: a per-lead event counter plus points by a simple
rule (page 1, pricing 5, track 3, demo request 50), kept in the key's state store. Records
producer timestamp and latency to "state updated" per message. Commits every
--commit-interval seconds instead of Quix's 5 s default (the parent sees the end of the
throughput phase in the committed offsets). On SIGTERM Quix stops, commits, and this
writes ``{"ts": [...], "lat_ms": [...]}`` to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from array import array
from pathlib import Path
from typing import Any

TS: array[float] = array("d")
LAT: array[float] = array("d")


def points(value: dict[str, Any]) -> int:
    if value.get("type") == "page":
        return 5 if value.get("name") == "Pricing" else 1
    if value.get("event") == "Demo Requested":
        return 50
    return 3 if value.get("type") == "track" else 0


def score(value: dict[str, Any], key: Any, timestamp: int, headers: Any, state: Any) -> None:
    state.set("count", state.get("count", 0) + 1)
    state.set("score", state.get("score", 0) + points(value))
    TS.append(timestamp)
    LAT.append(time.time() * 1000 - timestamp)


def main() -> None:
    from quixstreams import Application

    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topics", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--commit-interval", type=float, default=0.2)
    args = ap.parse_args()
    app = Application(
        broker_address=args.bootstrap, consumer_group=args.group,
        auto_offset_reset="earliest", state_dir=args.state_dir, loglevel="WARNING",
        commit_interval=args.commit_interval,
    )
    for name in args.topics.split(","):
        sdf = app.dataframe(app.topic(name, value_deserializer="json", key_deserializer="str"))
        sdf.update(score, stateful=True, metadata=True)
    try:
        app.run()
    finally:
        Path(args.out).write_text(json.dumps({"ts": TS.tolist(), "lat_ms": LAT.tolist()}))


if __name__ == "__main__":
    main()
