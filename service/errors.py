"""Domain exceptions. They are mapped to HTTP in one place (service.app); nothing else knows HTTP codes."""

from __future__ import annotations


class CauserecError(Exception):
    """Base class: the message is safe to show to a client."""


class BundleError(CauserecError):
    """A model bundle is missing, corrupt or incompatible."""


class ModelNotReady(CauserecError):
    """No model is loaded (yet), or it is still warming up."""


class StoreUnavailable(CauserecError):
    """Redis did not answer in time or refused the connection."""


class Overloaded(CauserecError):
    """The inference queue is full; the client should retry later."""


class StoreConflict(CauserecError):
    """Too many concurrent writers on one user; the append was not applied."""


class UnknownUser(CauserecError):
    """No state is stored for this user."""


class UserStateCorrupt(CauserecError):
    """A user's stored state (the truth) cannot be read or was written for another layout; it
    cannot be rebuilt, so this user's request is answered without it (or refused, for writes)."""


class InvalidEvents(CauserecError):
    """Some events of a batch are invalid; nothing of the batch was written."""

    def __init__(self, invalid: list) -> None:  # type: ignore[type-arg]
        super().__init__(f"{len(invalid)} invalid event(s); nothing was written")
        self.invalid = invalid


class EventsNotApplied(CauserecError):
    """Some users' events of a valid batch were not applied (the others were); ``results`` says which."""

    def __init__(self, message: str, results: list, retryable: bool) -> None:  # type: ignore[type-arg]
        super().__init__(message)
        self.results = results
        self.retryable = retryable


class Unauthorized(CauserecError):
    """No API key, or an unknown one."""


class Forbidden(CauserecError):
    """A valid API key without the scope this route needs."""
