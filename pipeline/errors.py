"""The error hierarchy: every error leadflow raises on purpose is a LeadflowError."""

from __future__ import annotations


class LeadflowError(Exception):
    """Base of all errors leadflow raises deliberately; the message is meant for a user."""


class ConfigError(LeadflowError):
    """Settings or command-line options that cannot work."""


class RulesError(LeadflowError):
    """A rules file that is missing, unreadable or invalid; the message names path and line."""


class InvalidEvent(LeadflowError):
    """An inbound message that cannot be scored; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(LeadflowError):
    """The local Kafka broker could not be started, reached or stopped."""


class WorkerUnreachable(LeadflowError):
    """No worker answered a request for its web API (or it answered with an error)."""
