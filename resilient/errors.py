"""The exceptions `resilient` raises into callers.

``ResilientError`` is the root. A ``RejectedError`` means the function was not
called at all (a breaker, bulkhead or throttle refused it), so it is never
retried and never counted as a downstream failure. Data lives in attributes; a
sentence lives in ``str()``; secrets live in neither.
"""

from __future__ import annotations

import math

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "LimitExceededError",
    "RejectedError",
    "ResilientError",
]


class ResilientError(Exception):
    """Base class of every exception raised by `resilient`."""


class RejectedError(ResilientError):
    """The call was refused before the function ran."""


class CircuitOpenError(RejectedError):
    """A circuit breaker refused the call.

    Attributes:
        name: the breaker's name.
        retry_after: seconds until a probe may be admitted: the rest of the
            open duration in OPEN, ``0.0`` when HALF_OPEN's probes are taken or
            for an adaptive drop, ``math.inf`` in FORCED_OPEN.
    """

    def __init__(self, name: str, retry_after: float, reason: str = "open") -> None:
        # The sentence is built in __str__: rejections are frequent, reading them is not.
        super().__init__(name, retry_after, reason)
        self.name = name
        self.retry_after = retry_after
        self.reason = reason

    def __str__(self) -> str:
        if math.isinf(self.retry_after):
            when = "until it is reset"
        else:
            when = f"retry after {self.retry_after:.3f}s"
        return f"circuit {self.name!r} rejected the call ({self.reason}); {when}"

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float, str]]:
        return (type(self), (self.name, self.retry_after, self.reason))


class BulkheadFullError(RejectedError):
    """A bulkhead had no free slot (and no queue place) for the call."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"bulkhead full: {limit} concurrent calls already running")

    def __reduce__(self) -> tuple[type[BulkheadFullError], tuple[int]]:
        return (type(self), (self.limit,))


class LimitExceededError(RejectedError):
    """A ``ConcurrencyLimit`` refused the call: ``limit`` calls were already in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"concurrency limit reached: {limit} calls already in flight")

    def __reduce__(self) -> tuple[type[LimitExceededError], tuple[int]]:
        return (type(self), (self.limit,))


class DeadlineExceeded(ResilientError, TimeoutError):
    """The caller's deadline ran out.

    Raised where a ``deadline()`` scope ends with its budget spent inside an
    awaited call, and by layers that refuse to start work with no budget left.
    A per-attempt timeout raises a plain ``TimeoutError`` instead.
    """


class ConfigError(ResilientError, ValueError):
    """A configuration value is invalid.

    Attributes:
        field: the offending field (``None`` for a whole-object problem).
        value: the rejected value.
    """

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        self.field = field
        self.value = value
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_config_error, (str(self), self.field, self.value))


def _rebuild_config_error(message: str, field: str | None, value: object) -> ConfigError:
    return ConfigError(message, field=field, value=value)
