"""Every leadflow client against a real broker with a SASL_SSL listener (TLS + SASL login).

One LocalBroker for the module (the same start path as the plain test broker, plus
``security=ListenerSecurity(...)``): a generated CA and a certificate for 127.0.0.1, a PLAIN
user from the listener's JAAS config, SCRAM-SHA-256/512 users written at format time, and
Kafka's StandardAuthorizer (super users: ``alice``, ``pat`` and the PLAINTEXT listener, which
the broker uses itself; ``ae-emea`` gets only the ACLs of deploy/SECURITY.md).

Clients are given only the SASL_SSL address, whose metadata advertises only SASL_SSL.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from pydantic import ValidationError
from typer.testing import CliRunner, Result

from pipeline.cli.main import app as cli
from pipeline.devkafka.broker import LocalBroker
from pipeline.devkafka.secure_listener import ListenerSecurity, make_certificates
from pipeline.errors import BrokerError
from pipeline.kafka.security import KafkaSecurity
from pipeline.kafka.topics import TopicSpec, ensure_topics, topic_specs
from pipeline.settings import Settings, Topics
from tests.conftest import KAFKA_VERSION

PASSWORDS = {"alice": "alice-s3cret", "pat": "pat-s3cret", "ae-emea": "emea-s3cret"}


@dataclass
class Secured:
    broker: LocalBroker
    ca: Path
    other_ca: Path

    @property
    def bootstrap(self) -> str:
        return self.broker.secure_bootstrap

    def security(self, user: str = "alice", mechanism: str = "SCRAM-SHA-256",
                 password: str | None = None) -> KafkaSecurity:
        return KafkaSecurity("SASL_SSL", mechanism, user,
                             PASSWORDS[user] if password is None else password, cafile=self.ca)

    def env(self, user: str = "alice", mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """The client settings as an operator sets them: environment variables only."""
        return {
            "LEADFLOW_BOOTSTRAP_SERVERS": self.bootstrap,
            "LEADFLOW_SECURITY_PROTOCOL": "SASL_SSL",
            "LEADFLOW_SASL_MECHANISM": mechanism,
            "LEADFLOW_SASL_USERNAME": user,
            "LEADFLOW_SASL_PASSWORD": PASSWORDS[user],
            "LEADFLOW_SSL_CAFILE": str(self.ca),
        }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, kafka_jars: Path) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secure-kafka")
    certs = make_certificates(root / "certs")
    other = make_certificates(root / "other-certs", ca_name="someone else's CA")
    listener = ListenerSecurity(
        certs,
        plain_users={"pat": PASSWORDS["pat"]},
        scram_users={"alice": PASSWORDS["alice"], "ae-emea": PASSWORDS["ae-emea"]},
        authorizer=True,
        super_users=("alice", "pat"),
    )
    broker = LocalBroker(root / "broker", kafka_jars, KAFKA_VERSION, heap_mb=384,
                         security=listener)
    broker.start()
    try:
        yield Secured(broker, certs.ca_cert, other.ca_cert)
    finally:
        broker.stop()


async def _topic(secured: Secured, prefix: str = "sec", partitions: int = 1) -> str:
    name = f"{prefix}.{uuid.uuid4().hex[:10]}"
    await ensure_topics(secured.bootstrap, [TopicSpec(name, partitions, 1)],
                        security=secured.security())
    return name


async def _read(bootstrap: str, security: KafkaSecurity, topic: str, n: int,
                timeout_s: float = 30.0) -> list[Any]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, **security.client_kwargs())
    await c.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for records in (await c.getmany(timeout_ms=500)).values():
                out.extend(records)
    finally:
        await c.stop()
    return out


async def _cli(args: list[str], env: dict[str, str]) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, args, env=env,
                                   catch_exceptions=False)


# --- settings (no broker) -----------------------------------------------------------------


def test_sasl_protocol_without_credentials_names_the_missing_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEADFLOW_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LEADFLOW_SASL_USERNAME", "alice")
    with pytest.raises(ValidationError) as err:
        Settings()
    text = str(err.value)
    assert "LEADFLOW_SASL_MECHANISM" in text and "LEADFLOW_SASL_PASSWORD" in text
    assert "LEADFLOW_SASL_USERNAME" not in text


def test_settings_reject_unknown_mechanism_and_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sasl_mechanism"):
        Settings(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI",  # type: ignore[arg-type]
                 sasl_username="a", sasl_password="b")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"LEADFLOW_SSL_CAFILE=.*no such file"):
        Settings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(ValidationError, match="use SASL_SSL"):
        Settings(sasl_username="a")


def test_settings_to_client_kwargs_and_faust_credentials(tmp_path: Path) -> None:
    import faust

    ca = make_certificates(tmp_path).ca_cert
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="alice", sasl_password="pw", ssl_cafile=ca)  # type: ignore[arg-type]
    sec = KafkaSecurity.from_settings(s)
    kw = sec.client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("alice", "pw")
    assert kw["ssl_context"].check_hostname is True
    assert "pw" not in repr(sec) and "pw" not in repr(s)
    creds = sec.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert KafkaSecurity.from_settings(Settings()).client_kwargs() == {
        "security_protocol": "PLAINTEXT"}
    assert KafkaSecurity.from_settings(Settings()).faust_credentials() is None
    tls = KafkaSecurity.from_settings(Settings(security_protocol="SSL", ssl_cafile=ca))
    assert isinstance(tls.faust_credentials(), faust.SSLCredentials)
    assert "sasl_mechanism" not in tls.client_kwargs()


# --- the secured broker -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("user", "mechanism"), [
    ("alice", "SCRAM-SHA-256"), ("alice", "SCRAM-SHA-512"), ("pat", "PLAIN")])
async def test_produce_consume_round_trip(secured: Secured, user: str, mechanism: str) -> None:
    sec = secured.security(user, mechanism)
    topic = await _topic(secured)
    p = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, acks="all", **sec.client_kwargs())
    await p.start()
    try:
        for i in range(3):
            await p.send_and_wait(topic, f"{mechanism}-{i}".encode(), key=b"k")
    finally:
        await p.stop()
    got = await _read(secured.bootstrap, sec, topic, 3)
    assert [r.value for r in got] == [f"{mechanism}-{i}".encode() for i in range(3)]


@pytest.mark.integration
async def test_wrong_password_is_refused_with_a_clear_error(secured: Secured) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError) as err:
        await ensure_topics(secured.bootstrap, [TopicSpec("never.made", 1, 1)],
                            security=secured.security(password="wrong"))
    text = str(err.value)
    assert "SASL login" in text and "'alice'" in text and "SCRAM-SHA-256" in text, text
    assert "LEADFLOW_SASL_PASSWORD" in text and "wrong" not in text
    assert time.monotonic() - started < 30


@pytest.mark.integration
async def test_unknown_ca_fails_the_tls_handshake(secured: Secured) -> None:
    sec = KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", "alice", PASSWORDS["alice"],
                        cafile=secured.other_ca)
    with pytest.raises(BrokerError) as err:
        await ensure_topics(secured.bootstrap, [TopicSpec("never.made", 1, 1)], security=sec)
    text = str(err.value)
    assert "TLS handshake" in text and "CERTIFICATE_VERIFY_FAILED" in text, text
    assert "LEADFLOW_SSL_CAFILE" in text


@pytest.mark.integration
async def test_plaintext_client_on_the_secured_port_fails_with_a_hint(secured: Secured) -> None:
    with pytest.raises(BrokerError, match="LEADFLOW_SECURITY_PROTOCOL"):
        await ensure_topics(secured.bootstrap, [TopicSpec("never.made", 1, 1)], timeout_s=5)


@pytest.mark.integration
async def test_topics_create_cli_over_sasl_ssl(secured: Secured) -> None:
    prefix = f"cli{uuid.uuid4().hex[:6]}"
    names = {f: f"{prefix}.{v}" for f, v in Topics().model_dump().items()}
    env = {**secured.env(), "LEADFLOW_APP_ID": prefix,
           **{f"LEADFLOW_TOPIC_{k.upper()}": v for k, v in names.items()}}
    result = await _cli(["topics", "create", "--teams", "emea,sales"], env)
    assert result.exit_code == 0, result.output
    settings = Settings(app_id=prefix, topics=Topics(**names))
    wanted = {s.name for s in topic_specs(settings, teams=["emea", "sales"])}
    assert f"{prefix}.routing.emea" in wanted
    report = await ensure_topics(
        secured.bootstrap, topic_specs(settings, teams=["emea", "sales"]),
        security=secured.security("pat", "PLAIN"))
    assert report.created == [] and set(report.existing) == wanted


@pytest.mark.integration
async def test_collector_writes_over_sasl_ssl(secured: Secured, tmp_path: Path) -> None:
    from aiohttp import web

    from pipeline.collector.app import create_app
    from pipeline.devkafka.ports import free_port

    names = {src: await _topic(secured, f"events-{src}") for src in ("web", "email", "product",
                                                                     "crm")}
    settings = Settings(
        topics=Topics(**names), write_keys={"web-key": "web"}, security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256", sasl_username="alice",
        sasl_password=PASSWORDS["alice"], ssl_cafile=secured.ca,  # type: ignore[arg-type]
    )
    runner = web.AppRunner(create_app(settings, bootstrap=secured.bootstrap), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        mid = f"m-{uuid.uuid4()}"
        msg = {"messageId": mid, "event": "Demo Requested", "userId": "u-7",
               "timestamp": datetime.now(UTC).isoformat()}
        auth = {"Authorization": "Basic " + base64.b64encode(b"web-key:").decode()}
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{port}/v1/track", json=msg, headers=auth) as r:
            assert r.status == 200, await r.text()
    finally:
        await runner.cleanup()
    got = await _read(secured.bootstrap, secured.security(), names["web"], 1)
    assert len(got) == 1 and got[0].key == b"u-7"
    assert orjson.loads(got[0].value)["messageId"] == mid


def _alert(alert_id: str, lead_id: str, team: str) -> dict[str, Any]:
    return {"schema_version": 1, "alert_id": alert_id, "lead_id": lead_id, "team": team,
            "kind": "instant", "temperature": "hot", "owner": "alice",
            "triggered_at": "2024-05-02T10:15:00Z", "sla_seconds": 300,
            "due_at": "2024-05-02T10:20:00Z", "scores": {"total": 85.0}}


@pytest.mark.integration
async def test_alerts_tail_and_ack_cli_over_sasl_ssl(secured: Secured) -> None:
    prefix = f"al{uuid.uuid4().hex[:6]}"
    routing, crm = f"{prefix}.routing.emea", f"{prefix}.events.crm"
    await ensure_topics(secured.bootstrap, [TopicSpec(routing, 1, 1), TopicSpec(crm, 1, 1)],
                        security=secured.security())
    p = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, **secured.security().client_kwargs())
    await p.start()
    try:
        await p.send_and_wait(routing, orjson.dumps(_alert("a-1", "lead-9", "emea")))
    finally:
        await p.stop()
    env = {**secured.env(), "LEADFLOW_TOPIC_ROUTING_PREFIX": f"{prefix}.routing.",
           "LEADFLOW_TOPIC_CRM": crm}
    tail = await _cli(["alerts", "tail", "--team", "emea", "--from-start", "--json",
                       "--max", "1", "--timeout", "20"], env)
    assert tail.exit_code == 0, tail.output
    assert orjson.loads(tail.stdout.splitlines()[0])["alert_id"] == "a-1"
    ack = await _cli(["alerts", "ack", "a-1", "--owner", "bob"], env)
    assert ack.exit_code == 0, ack.output
    got = await _read(secured.bootstrap, secured.security("pat", "PLAIN"), crm, 1)
    event = orjson.loads(got[0].value)
    assert got[0].key == b"lead-9" and event["event"] == "Alert Acknowledged"
    assert event["properties"] == {"alert_id": "a-1", "owner": "bob"}


@pytest.mark.integration
async def test_forwarder_over_sasl_ssl(secured: Secured) -> None:
    from aiohttp import web

    from pipeline.alerts.forward import ForwardConfig, Forwarder
    from pipeline.devkafka.ports import free_port

    routing = await _topic(secured, "fw.routing.emea")
    deadletter = await _topic(secured, "fw.deadletter")
    p = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, **secured.security().client_kwargs())
    await p.start()
    try:
        await p.send_and_wait(routing, orjson.dumps(_alert("a-fw", "lead-fw", "emea")))
    finally:
        await p.stop()
    posted: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response(status=204)

    webapp = web.Application()
    webapp.router.add_post("/hook", hook)
    runner = web.AppRunner(webapp, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        cfg = ForwardConfig(
            bootstrap=secured.bootstrap, topic=routing, url=f"http://127.0.0.1:{port}/hook",
            group_id=f"fw-{uuid.uuid4().hex[:6]}", deadletter_topic=deadletter, max_alerts=1,
            security=secured.security("pat", "PLAIN"),
        )
        stats = await asyncio.wait_for(Forwarder(cfg).run(), 60)
    finally:
        await runner.cleanup()
    assert stats.delivered == 1
    assert [a["alert_id"] for a in posted] == ["a-fw"]


@pytest.mark.integration
async def test_alerts_cli_with_a_wrong_password_exits_with_the_reason(secured: Secured) -> None:
    env = {**secured.env(), "LEADFLOW_SASL_PASSWORD": "nope"}
    result = await _cli(["alerts", "tail", "--team", "emea", "--timeout", "5"], env)
    assert result.exit_code != 0
    assert "SASL login" in result.output and "LEADFLOW_SASL_PASSWORD" in result.output, (
        result.output)


# --- ACLs: an AE's consumer reads only its team's routing topic ------------------------------


def _kafka_acls(secured: Secured, *args: str) -> str:
    """Kafka's own kafka-acls tool (kafka.admin.AclCommand) on the PLAINTEXT listener."""
    b = secured.broker
    cmd = [*b._java_base(), "-Xmx128m", "kafka.admin.AclCommand",
           "--bootstrap-server", b.bootstrap, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.integration
async def test_ae_principal_reads_only_its_team_topic(secured: Secured) -> None:
    prefix = f"acl{uuid.uuid4().hex[:6]}"
    emea, sales = f"{prefix}.routing.emea", f"{prefix}.routing.sales"
    group = f"{prefix}-ae-emea"
    await ensure_topics(secured.bootstrap, [TopicSpec(emea, 1, 1), TopicSpec(sales, 1, 1)],
                        security=secured.security())
    p = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, **secured.security().client_kwargs())
    await p.start()
    try:
        await p.send_and_wait(emea, orjson.dumps(_alert("a-e", "lead-e", "emea")))
        await p.send_and_wait(sales, orjson.dumps(_alert("a-s", "lead-s", "sales")))
    finally:
        await p.stop()
    # The command of deploy/SECURITY.md: Read on the team's topic and on the AE's group.
    _kafka_acls(secured, "--add", "--allow-principal", "User:ae-emea", "--operation", "Read",
                "--topic", emea, "--group", group)

    ae = secured.security("ae-emea", "SCRAM-SHA-512")
    c = AIOKafkaConsumer(emea, bootstrap_servers=secured.bootstrap, group_id=group,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         **ae.client_kwargs())
    await c.start()
    try:
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            for records in (await c.getmany(timeout_ms=500)).values():
                got += records
        assert [orjson.loads(r.value)["alert_id"] for r in got] == ["a-e"]
        await c.commit()  # the group ACL allows committing its offsets
    finally:
        await c.stop()

    env = {**secured.env("ae-emea"), "LEADFLOW_TOPIC_ROUTING_PREFIX": f"{prefix}.routing."}
    own = await _cli(["alerts", "tail", "--team", "emea", "--from-start", "--json",
                      "--max", "1", "--timeout", "20"], env)
    assert own.exit_code == 0, own.output
    assert orjson.loads(own.stdout.splitlines()[0])["alert_id"] == "a-e"
    refused = await _cli(["alerts", "tail", "--team", "sales", "--from-start", "--timeout", "5"],
                         env)
    assert refused.exit_code != 0
    assert f"not authorized to read topic {sales} as 'ae-emea'" in refused.output, refused.output

    # Read only: the AE cannot write alerts, not even to its own topic.
    ae_producer = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, **ae.client_kwargs())
    await ae_producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await ae_producer.send_and_wait(emea, b"{}")
    finally:
        await ae_producer.stop()

    # Another group name is refused: the AE cannot dodge the group ACL.
    c2 = AIOKafkaConsumer(emea, bootstrap_servers=secured.bootstrap,
                          group_id=f"{prefix}-someone-else", auto_offset_reset="earliest",
                          **ae.client_kwargs())
    try:
        with pytest.raises(GroupAuthorizationFailedError):  # joining the group is refused
            await asyncio.wait_for(c2.start(), 30)
    finally:
        await c2.stop()


# --- the worker: the main client, a real `leadflow worker` process ---------------------------


@pytest.mark.integration
@pytest.mark.slow
async def test_worker_scores_and_routes_over_sasl_ssl(secured: Secured, tmp_path: Path) -> None:
    from tests.support.scenario import offline_moves, scenario
    from tests.support.workers import Isolated, WorkerProcess, poll

    # SCRAM-SHA-512 from the environment only, as an operator would configure the worker.
    iso = Isolated(secured.bootstrap, tmp_path / "home", partitions=2,
                   extra_env=secured.env("alice", "SCRAM-SHA-512"))
    teams = ["sales", "enterprise", "smb", "emea"]
    sec = secured.security("alice", "SCRAM-SHA-512")
    await ensure_topics(secured.bootstrap, topic_specs(iso.settings, teams=teams), security=sec)
    worker = WorkerProcess(iso, tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        msgs = [m for m in scenario("anon-s", "u-sec") if m[0] == "web"]  # to the demo request
        expected = offline_moves(msgs)
        assert expected == [("u-sec", "visitor", "lead"), ("u-sec", "lead", "mql")]

        t = iso.settings.topics
        p = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, acks="all",
                             **sec.client_kwargs())
        await p.start()
        try:
            for _, body in msgs:
                key = (body.get("userId") or body.get("anonymousId")).encode()
                await p.send_and_wait(t.web, orjson.dumps(body), key=key)
        finally:
            await p.stop()

        got = await _read(secured.bootstrap, sec, t.stage_changes, len(expected), timeout_s=90)
        moves = [orjson.loads(r.value) for r in got]
        applied = [(d["lead_id"], d["from_stage"], d["to_stage"]) for d in moves
                   if d.get("status", "applied") == "applied"]
        assert applied == expected, worker.tail()

        # The demo request is an instant trigger: a hot-lead alert on the owning team's topic.
        # (A hot-score alert may come first: which event crosses the hot line depends on the
        # order the visitor's anonymous and identified partitions are read in.)
        demo = "u-sec:instant:demo_request:u-sec-m9"
        decoded: list[Any] = []
        deadline = time.monotonic() + 30
        while demo not in {d["alert_id"] for d in decoded} and time.monotonic() < deadline:
            decoded = []
            for team in teams:
                recs = await _read(secured.bootstrap, sec, t.routing(team), 1, timeout_s=1)
                decoded += [orjson.loads(r.value) for r in recs]
        assert decoded and {d["lead_id"] for d in decoded} == {"u-sec"}, worker.tail()
        assert demo in {d["alert_id"] for d in decoded}, decoded
        assert {d["kind"] for d in decoded} <= {"instant", "hot_score"}, decoded
        # The alerts are sent before the lead's table write: wait for the write.
        await poll(lambda: worker.get("/leads/u-sec"),
                   lambda r: r[0] == 200 and r[1]["events_seen"] == len(msgs), timeout=30)
    finally:
        code = worker.stop()
    assert code == 0, worker.tail()
