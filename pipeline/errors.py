"""The error hierarchy: every error leadflow raises on purpose is a LeadflowError."""

from __future__ import annotations


class LeadflowError(Exception):
    """Base of all errors leadflow raises deliberately; the message is meant for a user."""


class ConfigError(LeadflowError):
    """Settings or command-line options that cannot work."""


class RulesError(LeadflowError):
    """A rules file that is missing, unreadable or invalid; the message names path and line.

    `problems` holds one line per problem found (all of them, not just the first); the
    message is those lines joined by newlines.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems: tuple[str, ...] = tuple(problems) if problems else (message,)
        super().__init__(message)

    @classmethod
    def of(cls, problems: list[str]) -> RulesError:
        """One error for every problem in a file."""
        return cls("\n".join(problems), problems)


class RulesRefused(LeadflowError):
    """Rules that are valid but may not be published: their revision goes backwards, or
    reuses a published revision for other rules."""


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


class InvalidQuery(LeadflowError):
    """A search the lead API or the console cannot run (empty, too long, control characters)."""
