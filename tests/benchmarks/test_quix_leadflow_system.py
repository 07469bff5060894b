"""The quix_leadflow system's steps (leadflow's stages on one record each, with per-key
state as Quix keeps it), run over an in-memory copy of its topics: no Quix, no broker."""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson
import pytest

from pipeline.core.rules import load_default_rules
from pipeline.stream.codec import OwnerUpdate, decode_event, decode_leads_line
from pipeline.stream.stages.records import Destinations, RawMessage
from tests.support.benchmarks import load_script

mod = load_script("quix_leadflow_system")
RULES = load_default_rules()
T0 = 1_767_693_600_000  # 2026-01-06T10:00:00Z, a Tuesday: the teams are at work
INPUTS = {"web": "run.events.web", "crm": "run.events.crm"}


class KeyState:
    """Quix's State for one key of one store: values by name."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = orjson.loads(orjson.dumps(value))  # stored as Quix stores it: JSON


def _steps() -> Any:
    topics = mod.prefixed_topics("run.", INPUTS)
    dest = Destinations.of(topics, "g", 4, RULES.version)
    return mod.Steps(RULES, dest, {t: s for s, t in INPUTS.items()}, max_bytes=65536,
                     max_future_skew_ms=300_000, dedup_retention_ms=7 * 86_400_000,
                     visitor_buffer=200)


class Topics:
    """The app's topics in memory; each step's state per (store, key), as Quix keeps it."""

    def __init__(self, steps: Any) -> None:
        self.steps = steps
        self.state: dict[tuple[str, bytes], KeyState] = {}
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def run(self, messages: list[tuple[str, bytes, bytes]]) -> None:
        d = self.steps.dest
        queue = deque(messages)
        offset = 0
        while queue:
            topic, key, value = queue.popleft()
            self.sent.append((topic, key, value))
            if topic in self.steps.sources:
                offset += 1
                out = self.steps.ingest(RawMessage(topic, 0, offset, T0 + offset, key, value))
            elif topic == d.identity:
                out = self.steps.stitch(value, key, self._state("identity", key))
            elif topic == d.leads:
                out = self.steps.score(value, key, self._state("leads", key), T0 + 10_000)
            elif topic == d.assign:
                out = self.steps.assign(value, key, self._state("assign", key))
            else:
                continue
            assert all(s.partition is None and s.key for s in out)  # Quix partitions by key
            assert {s.topic for s in out} <= set(self.steps.outputs())
            queue.extend((s.topic, s.key, s.value) for s in out)

    def _state(self, store: str, key: bytes) -> KeyState:
        return self.state.setdefault((store, key), KeyState())

    def on(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        return [(k, v) for t, k, v in self.sent if t == topic]


def _msg(body: dict[str, Any], at_ms: int) -> bytes:
    from datetime import UTC, datetime

    ts = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return orjson.dumps({**body, "timestamp": ts})


def test_a_visitor_is_stitched_scored_alerted_and_owned_across_the_four_steps() -> None:
    steps = _steps()
    app = Topics(steps)
    web = INPUTS["web"]
    app.run([
        (web, b"anon-1", _msg({"type": "page", "messageId": "p1", "anonymousId": "anon-1",
                               "name": "Pricing", "properties": {"path": "/pricing"}}, T0)),
        (web, b"u1", _msg({"type": "identify", "messageId": "i1", "anonymousId": "anon-1",
                           "userId": "u1", "traits": {"email": "ada@stark.de", "country": "DE",
                                                      "employees": 50}}, T0 + 1000)),
        (web, b"u1", _msg({"type": "track", "messageId": "d1", "userId": "u1",
                           "event": "Demo Requested"}, T0 + 2000)),
        (web, b"u1", b"{not json"),
    ])
    d = steps.dest
    # stitched under the identity key (anonymousId first), credited to the user once known
    assert [k for k, _ in app.on(d.identity)] == [b"anon-1", b"anon-1", b"u1"]
    assert [(k, decode_event(v).message_id) for k, v in app.on(d.leads)
            if not v.startswith(b'{"owner_of"')] == [(b"u1", "p1"), (b"u1", "i1"), (b"u1", "d1")]
    # the demo request: one alert to its team's routing topic, owned, triggered by it
    team = next(t for t in RULES.teams() if app.on(d.topics.routing(t)))
    alerts = [orjson.loads(v) for _, v in app.on(d.topics.routing(team))]
    assert [(a["lead_id"], a["triggered_ms"], a["trigger"]["message_id"]) for a in alerts] == [
        ("u1", T0 + 2000, "d1")]
    owner = alerts[0]["owner"]
    assert owner is not None and app.on(d.topics.routing(team))[0][0] == b"u1"
    # the owner went back to the lead over the leads topic and is in its state
    owners = [decode_leads_line(v, k) for k, v in app.on(d.leads) if v.startswith(b'{"owner_of"')]
    assert owners == [OwnerUpdate("u1", owner, team, alerts[0]["alert_id"])]
    lead = app.state[("leads", b"u1")].get("lead")
    assert (lead["s"]["owner"], lead["route"]) == (owner, {"team": team,
                                                           "alert_id": alerts[0]["alert_id"]})
    assert [orjson.loads(v)["lead_id"] for _, v in app.on(d.topics.assignments)] == ["u1"]
    assert app.state[("assign", team.encode())].get("team")["pending"]
    # the bad message: a dead letter with why, under its own key
    letters = [(k, orjson.loads(v)) for k, v in app.on(d.topics.deadletter)]
    assert [(k, dl["reason"], dl["source_topic"]) for k, dl in letters] == [
        (b"u1", "bad_json", web)]


def test_a_repeated_message_is_scored_once() -> None:
    steps = _steps()
    app = Topics(steps)
    ident = _msg({"type": "identify", "messageId": "i1", "userId": "u2",
                  "traits": {"email": "bo@stark.de"}}, T0)
    demo = _msg({"type": "track", "messageId": "d2", "userId": "u2",
                 "event": "Demo Requested"}, T0 + 1000)
    app.run([(INPUTS["web"], b"u2", ident), (INPUTS["web"], b"u2", demo),
             (INPUTS["crm"], b"u2", demo)])
    d = steps.dest
    # both copies reach the score step; its dedup window drops the second
    assert [decode_event(v).message_id for _, v in app.on(d.leads)
            if not v.startswith(b'{"owner_of"')] == ["i1", "d2", "d2"]
    assert sum(len(app.on(d.topics.routing(t))) for t in RULES.teams()) == 1


def test_a_record_under_another_key_than_its_state_is_an_error() -> None:
    steps = _steps()
    line = steps.ingest(RawMessage(INPUTS["web"], 0, 0, T0, b"u3", _msg(
        {"type": "track", "messageId": "x", "userId": "u3", "event": "Email Opened"}, T0)))
    [send] = line
    with pytest.raises(mod.WrongKey, match="'u4'"):
        steps.stitch(send.value, b"u4", KeyState())
    with pytest.raises(mod.WrongKey):
        steps.score(send.value, b"u4", KeyState(), T0)


def test_the_output_topics_keep_leadflows_names_under_the_prefix() -> None:
    t = mod.prefixed_topics("bench-1.quix-leadflow.", INPUTS)
    assert (t.web, t.crm, t.email) == ("run.events.web", "run.events.crm",
                                       "bench-1.quix-leadflow.events.email")
    assert t.routing("emea") == "bench-1.quix-leadflow.routing.emea"
    assert t.deadletter == "bench-1.quix-leadflow.events.deadletter"


def test_the_steps_take_the_workers_settings_as_the_bench_passes_them() -> None:
    from pipeline.settings import Settings
    from pipeline.stream.app import Tuning

    bench = load_script("e2e_bench")
    settings = Settings(score_ledger=False, dedup_retention_s=60.0, max_message_bytes=4096,
                        max_future_skew_s=1.5)
    args = mod.parser().parse_args([
        "--bootstrap", "b:1", "--group", "g", "--topics", "t.web,t.crm", "--sources", "web,crm",
        "--out", "o.json", "--state-dir", "s", "--out-prefix", "p.", "--partitions", "3",
        *bench._worker_settings(settings, Tuning(visitor_buffer=7))])
    steps = mod.steps_from(args)
    assert (steps.max_bytes, steps.max_future_skew_ms, steps.dedup_retention_ms,
            steps.visitor_buffer) == (4096, 1500, 60_000, 7)
    assert steps.dest.score_ledger is False and steps.dest.partitions == 3
    assert steps.sources == {"t.web": "web", "t.crm": "crm"}
    assert (steps.dest.identity, steps.dest.topics.stage_changes) == (
        "g-identity", "p.leads.stage-changes")


def test_the_quix_venv_gets_the_stage_dependencies_as_pyproject_pins_them(tmp_path: Any) -> None:
    bench = load_script("e2e_bench")
    reqs = bench.stage_requirements()
    assert sorted(r.split(">")[0].split("<")[0].split("=")[0] for r in reqs) == sorted(
        bench.STAGE_DEPS)
    assert "aiokafka>=0.14,<0.15" in reqs and not any(r.startswith("faust") for r in reqs)
    short = tmp_path / "pyproject.toml"
    short.write_text('[project]\ndependencies = ["orjson>=3.9", "faust-streaming"]\n')
    with pytest.raises(LookupError, match="aiokafka"):
        bench.stage_requirements(short)


def test_one_record_at_a_time_gives_the_stage_moves_of_the_batched_stages() -> None:
    from pipeline.core.outputs import MoveRefused, StageMove
    from tests.support.stages import run_pipeline

    traffic = load_script("traffic")
    msgs = traffic.generate(3000, 600, seed=3, start_ms=T0 - 3_600_000, end_ms=T0)
    steps = _steps()
    app = Topics(steps)
    topic = {"crm": INPUTS["crm"]}
    app.run([(topic.get(s, INPUTS["web"]), k, v) for s, k, v in msgs])
    quix = sorted((d["lead_id"], d["from_stage"], d["to_stage"], d["status"], d["at_ms"])
                  for d in (orjson.loads(v) for _, v in app.on(steps.dest.topics.stage_changes)))
    raws = [RawMessage("events.crm" if s == "crm" else "events.web", 0, i, T0, k, v)
            for i, (s, k, v) in enumerate(msgs)]
    outputs, _ = run_pipeline(raws, batch=1000)
    batched = sorted((o.lead_id, o.from_stage, o.to_stage,
                      "applied" if isinstance(o, StageMove) else "refused", o.at_ms)
                     for o in outputs if isinstance(o, StageMove | MoveRefused))
    assert len(batched) > 600  # every lead is identified (visitor -> lead), some go further
    assert quix == batched
