"""Budgeted retries for idempotent HTTP requests, as an aiohttp client middleware.

One idea: ask again, but only when asking again is safe and affordable.

- Safe: only idempotent requests are retried (``GET``, ``HEAD``, ``PUT``,
  ``DELETE``, ``OPTIONS``, ``TRACE``, or any request carrying an
  ``Idempotency-Key`` header), and only while their body can be sent again.
- Worth it: connection errors and timeouts, and the statuses that say "try
  again" (429, 500, 502, 503 and 504 by default, as the big cloud API clients
  retry). A rejection by
  a breaker (``RejectedError``), the caller's deadline (``DeadlineExceeded``)
  and cancellation are never retried.
- Affordable: every request deposits into the host's ``RetryBudget`` (in
  batches every ``DEPOSIT_EVERY``, each dated when it began) and every retry
  withdraws from it, so retries add at most ``ratio`` to the load
  on a host that is already failing (one budget per ``host:port``). And
  after ``STREAK`` failed attempts in a row at a host, nothing is retried
  there until an attempt succeeds: a host that answers nothing is down, not
  flaky, and the breaker (which sees every attempt) is about to say so.
- In time: the whole request, retries included, ends by ``Timeouts.total``
  and by the caller's deadline; a retry whose wait would not leave time for
  an attempt is not made. A ``Retry-After`` (seconds or an HTTP date) on the
  response is honoured: the retry waits at least that long, or is not made
  when that is longer than the time left.

The steps are sync methods that never await (``start`` before the first
attempt, ``plan`` after a failed one); ``resilient.http._pipeline`` carries
them out. The request's total budget is what bounds the retries: a retry
middleware stacked alone publishes the request's expiry for a timeout
middleware after it (``publish_expiry``).

Concurrency: one event loop. The layer holds no per-request state; a host's
budget and streak live in its ``Host`` (created on first use), and the
budget is thread-safe itself.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, cast

import aiohttp
from aiohttp import ClientResponse

from resilient.budget import RetryBudget
from resilient.deadline import _current
from resilient.errors import ConfigError, DeadlineExceeded, RejectedError
from resilient.retry import FullJitter, RetryState

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from resilient.http._shared import Host

__all__ = [
    "RETRY_STATUSES",
    "Retries",
    "RetryLayer",
    "parse_retry_after",
    "retry_layer",
]

#: Statuses retried by default: rate limited, and the 5xx that big API clients retry.
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
#: Errors worth a retry: the connection failed, or the attempt ran out of time.
RETRYABLE_ERRORS: Final = (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError)
#: An attempt needs at least this long; a retry that would leave less is not made.
MIN_ATTEMPT: Final = 0.005
#: After this many failed attempts in a row at a host (across requests), its
#: failures are not retried until one attempt succeeds: retries help a host
#: that answers some requests; one that answers none is down, and another
#: attempt is only load (and a request sent into an outage).
STREAK: Final = 5
#: A host's requests go into its budget in batches, one per this many seconds
#: at most: one lock per batch instead of a clock read per request.
DEPOSIT_EVERY: Final = 0.05

Wait = Callable[["RetryCallState"], float]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None if absent or malformed.

    Args:
        value: the header's value: delay-seconds (``"120"``) or an HTTP date.
        now: epoch seconds, for dates (``time.time()`` if omitted).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # RFC 9110 dates are GMT; a date without a zone is not one
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _check_attempts(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"Retries attempts must be an integer >= 1, got {value!r}",
            field="attempts",
            value=value,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Retries:
    """How the HTTP layer retries.

    Args:
        attempts: the most attempts per request, the first included.
        statuses: response statuses that are retried (the response is
            returned as it is once the retries end).
        wait: seconds before the next attempt, from the attempt number: a
            ``FullJitter`` (the default: ``uniform(0, min(1, 0.05 * 2**(n-1)))``)
            or a tenacity ``wait_*`` strategy. ``Retry-After`` raises it.
        budget: makes the per-host ``RetryBudget`` (called once per
            ``host:port``); ``None`` for no budget (only ``attempts`` limits).

    Raises:
        ConfigError: a value is out of range (the message names it).
    """

    attempts: int = 3
    statuses: Collection[int] = RETRY_STATUSES
    wait: Wait = field(default_factory=lambda: FullJitter(initial=0.05, maximum=1.0))
    budget: Callable[[], RetryBudget] | None = RetryBudget

    def __post_init__(self) -> None:
        _check_attempts(self.attempts)
        statuses = frozenset(self.statuses)
        for status in statuses:
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise ConfigError(
                    f"Retries statuses must be HTTP statuses (100-599), got {status!r}",
                    field="statuses",
                    value=status,
                )
        object.__setattr__(self, "statuses", statuses)
        if not callable(self.wait):
            raise ConfigError("Retries wait must be callable", field="wait", value=self.wait)
        if self.budget is not None and not callable(self.budget):
            raise ConfigError(
                "Retries budget must make a RetryBudget (a callable) or be None",
                field="budget",
                value=self.budget,
            )


class RetryLayer:
    """The retry layer: asks again while it is safe, worth it, affordable and in time.

    Built by ``retry_middleware`` (alone) or ``resilient.http.session``. The
    decision after each attempt is ``plan`` (sync, no I/O); the pipeline
    carries it out. Per host it keeps a ``RetryBudget`` and the streak of
    failed attempts, in the request's ``Host``.
    """

    __slots__ = ("_attempts", "_make_budget", "_retryable", "_wait", "fixed_total", "statuses")

    def __init__(
        self,
        retries: Retries,
        total: float | None,
        retryable: tuple[type[BaseException], ...] = RETRYABLE_ERRORS,
    ) -> None:
        self._attempts = retries.attempts
        self._retryable = retryable  # the client library's errors worth a retry
        self.statuses = cast("frozenset[int]", retries.statuses)
        self._wait = retries.wait
        self._make_budget = retries.budget
        self.fixed_total = total  # None: the session's ClientTimeout total, per request

    def adopt(self, host: Host, req: object) -> None:
        host.budget = None if self._make_budget is None else self._make_budget()

    def deposit(self, host: Host, now: float) -> None:
        """Put the host's pending requests into its budget; the next batch is due later.

        They arrived since the last batch was due, so they are dated then:
        at most ``DEPOSIT_EVERY`` early, however long the host was quiet since.
        """
        budget = host.budget
        if budget is not None and host.pending:
            budget.record_requests(host.pending, age=now - (host.deposit_at - DEPOSIT_EVERY))
        host.pending = 0
        host.deposit_at = now + DEPOSIT_EVERY

    def retry_after(self, response: ClientResponse) -> float | None:
        return parse_retry_after(response.headers.get("Retry-After"))

    def plan(
        self,
        state: RetryState,
        retry_after: float | None,
        now: float,
        expiry: float,
        host: Host,
    ) -> float | None:
        """After a failed attempt: seconds to wait before the next one, or None to stop.

        In order: attempts, the host's streak of failures, the wait (at least
        ``retry_after``), the time left (the total budget and the deadline),
        and last the budget, which counts the retry only when everything else
        agreed.
        """
        if state.attempt_number >= self._attempts:
            return None
        if host.streak >= STREAK:
            return None  # every recent attempt failed: the host looks down, not flaky
        wait = float(self._wait(cast("RetryCallState", state)))
        if not wait > 0.0:  # also NaN
            wait = 0.0
        if retry_after is not None and retry_after > wait:
            wait = retry_after
        left = expiry - now
        scope = _current()
        if scope is not None:
            left = min(left, scope.remaining())
        if wait + MIN_ATTEMPT >= left:
            return None
        budget = host.budget
        if budget is not None:
            self.deposit(host, now)  # the requests so far buy this retry
            if not budget.allow_retry():
                return None
        return wait

    def worth_retrying(self, exc: BaseException) -> bool:
        if isinstance(exc, RejectedError | DeadlineExceeded):
            return False
        return isinstance(exc, self._retryable)


def retry_layer(
    retries: Retries | None = None,
    *,
    total: float | None = None,
    retryable: tuple[type[BaseException], ...] = RETRYABLE_ERRORS,
) -> RetryLayer:
    """The retry layer, for ``pipeline`` (see ``retry_middleware`` for the arguments).

    ``retryable``: the client library's errors worth a retry (aiohttp's by default).
    """
    if retries is None:
        retries = Retries()
    elif not isinstance(retries, Retries):
        raise ConfigError(
            f"retries must be a Retries, got {retries!r}", field="retries", value=retries
        )
    if total is not None and (
        isinstance(total, bool) or not isinstance(total, int | float) or not total > 0
    ):
        raise ConfigError(f"total must be a number > 0, got {total!r}", field="total", value=total)
    return RetryLayer(retries, total, retryable)
