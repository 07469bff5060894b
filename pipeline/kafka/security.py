"""Kafka client security from settings: TLS and SASL (PLAIN, SCRAM) for every client.

One ``KafkaSecurity`` is made from ``Settings`` and handed to every place that makes a
Kafka client: ``client_kwargs()`` for aiokafka producers, consumers and admin clients,
``faust_credentials()`` for the worker's ``faust.App(broker_credentials=...)`` (Faust's
aiokafka driver passes protocol, mechanism, user, password and SSL context through to
aiokafka as they are, so SCRAM works there too).

aiokafka reports a failed TLS handshake or SASL login only as "Unable to bootstrap" (the
cause is logged, not raised); ``explain_connect_failure`` opens one connection itself to
say what went wrong and which setting to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import BrokerError

if TYPE_CHECKING:
    from pipeline.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How leadflow's clients connect: protocol, SASL login and TLS files."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise BrokerError(f"unknown security protocol {self.protocol!r} (one of {PROTOCOLS})")
        if self.sasl and (self.sasl_mechanism not in MECHANISMS or not self.username
                          or self.password is None):
            raise BrokerError(
                f"{self.protocol} needs a SASL mechanism ({', '.join(MECHANISMS)}), "
                "a user name and a password"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaSecurity:
        """The security of ``settings`` (LEADFLOW_SECURITY_PROTOCOL, LEADFLOW_SASL_*, ...)."""
        return cls(
            protocol=settings.security_protocol,
            sasl_mechanism=settings.sasl_mechanism,
            username=settings.sasl_username,
            password=(settings.sasl_password.get_secret_value()
                      if settings.sasl_password is not None else None),
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
            key_password=(settings.ssl_key_password.get_secret_value()
                          if settings.ssl_key_password is not None else None),
            check_hostname=settings.ssl_check_hostname,
        )

    @property
    def sasl(self) -> bool:
        """Whether clients log in with SASL."""
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        """Whether connections are encrypted with TLS."""
        return self.protocol.endswith("SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (CA, optional client certificate), or None without TLS."""
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        try:
            ctx: ssl.SSLContext = create_ssl_context(
                cafile=str(self.cafile) if self.cafile else None,
                certfile=str(self.certfile) if self.certfile else None,
                keyfile=str(self.keyfile) if self.keyfile else None,
                password=self.key_password,
            )
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(
                f"cannot load the TLS files (LEADFLOW_SSL_CAFILE={self.cafile}, "
                f"LEADFLOW_SSL_CERTFILE={self.certfile}, LEADFLOW_SSL_KEYFILE={self.keyfile}):"
                f" {exc}"
            ) from exc
        # create_ssl_context always checks host names; some clusters advertise bare IPs or
        # internal names not in their certificates. The chain is still verified.
        ctx.check_hostname = self.check_hostname
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password
        return kwargs

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for ``faust.App``: SASLCredentials, SSLCredentials or None."""
        import faust

        if self.sasl:
            # With an ssl_context SASLCredentials is SASL_SSL, without it SASL_PLAINTEXT.
            return faust.SASLCredentials(
                username=self.username, password=self.password,
                ssl_context=self.ssl_context(), mechanism=self.sasl_mechanism,
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def describe(self) -> str:
        """For messages: ``SASL_SSL, SCRAM-SHA-256 as 'alice'`` (never the password)."""
        text = self.protocol
        if self.sasl:
            text += f", {self.sasl_mechanism} as {self.username!r}"
        return text


PLAINTEXT = KafkaSecurity()


async def explain_connect_failure(
    bootstrap: str, security: KafkaSecurity | None, timeout_s: float = 10.0
) -> str:
    """Why a client cannot connect to ``bootstrap``: one connection per host, the first cause.

    Returns a sentence naming the setting to check (the password, the CA file, ...).
    """
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError

    sec = security or PLAINTEXT
    causes: list[str] = []
    for host_port in bootstrap.split(","):
        host, _, port = host_port.strip().rpartition(":")
        kw = sec.client_kwargs()
        try:
            conn = await asyncio.wait_for(create_conn(
                host, int(port), request_timeout_ms=int(timeout_s * 1000),
                ssl_context=kw.get("ssl_context"), security_protocol=sec.protocol,
                sasl_mechanism=kw.get("sasl_mechanism", "PLAIN"),
                sasl_plain_username=kw.get("sasl_plain_username"),
                sasl_plain_password=kw.get("sasl_plain_password"),
            ), timeout_s)
        except ssl.SSLError as exc:
            causes.append(
                f"TLS handshake with {host_port} failed ({exc.reason or exc}): check "
                f"LEADFLOW_SSL_CAFILE (now {sec.cafile or 'the system CAs'}) and that the "
                "broker's listener speaks TLS"
            )
        except KafkaError as exc:
            if sec.sasl and "auth" in f"{type(exc).__name__} {exc}".lower():
                causes.append(
                    f"SASL login at {host_port} as {sec.username!r} ({sec.sasl_mechanism}) was "
                    f"refused: {exc}; check LEADFLOW_SASL_USERNAME, LEADFLOW_SASL_PASSWORD and "
                    "LEADFLOW_SASL_MECHANISM"
                )
            else:
                # e.g. a PLAINTEXT client on a TLS port: the broker just hangs up.
                causes.append(
                    f"{host_port}: {exc}; is LEADFLOW_SECURITY_PROTOCOL ({sec.protocol}) what "
                    "that listener speaks?"
                )
        except (OSError, TimeoutError, ValueError) as exc:
            what = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            causes.append(
                f"cannot connect to {host_port} ({what}); is LEADFLOW_SECURITY_PROTOCOL "
                f"({sec.protocol}) what that listener speaks?"
            )
        else:
            conn.close()
    if not causes:
        return f"every broker in {bootstrap} accepted a {sec.describe()} connection just now"
    return "; ".join(dict.fromkeys(causes))


async def connect_error(
    bootstrap: str, security: KafkaSecurity | None, exc: BaseException, what: str = "Kafka"
) -> BrokerError:
    """A BrokerError for a client that failed to start, with the real cause when it is known."""
    detail = await explain_connect_failure(bootstrap, security)
    return BrokerError(f"cannot reach {what} at {bootstrap} ({exc}): {detail}")


async def start_client(
    client: Any, bootstrap: str, security: KafkaSecurity | None, what: str = "Kafka"
) -> None:
    """``await client.start()``; a failed connection raises a BrokerError that says why."""
    from aiokafka.errors import KafkaConnectionError

    try:
        await client.start()
    except KafkaConnectionError as exc:
        stop = getattr(client, "stop", None) or client.close
        with contextlib.suppress(Exception):
            await stop()
        raise await connect_error(bootstrap, security, exc, what) from exc
