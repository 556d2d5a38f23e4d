"""The HTTP layers run as one aiohttp client middleware, in a fixed order.

One idea: every attempt passes the same layers in the same order, and on the
success path each layer costs a few statements, not a coroutine of its own.

    retry > breaker > per-attempt timeout > propagation > the wire

(the order of ``resilient.Policy``: deadline > retry > breaker > per-attempt
timeout > call). Each retry attempt goes through the host's breaker, so a
rejection is never retried and a retry storm is visible to the breaker; the
timeout is inside the breaker, so a timed-out attempt counts as a failure;
propagation runs per attempt, so the deadline header carries what is left
for *that* attempt.

A layer is an object with plain synchronous steps, and ``pipeline`` calls
them around aiohttp's handler in one coroutine:

- retry (``RetryLayer``): each request is counted in the host's budget
  (``deposit``, in batches); after a failed attempt of a request that may be
  retried (idempotent, its body replayable), ``plan`` gives the wait before
  the next one, or None to stop.
- breaker (``BreakerLayer``): ``pick`` names the attempt's breaker, which
  admits it (or the request fails with ``HostCircuitOpenError``) and is told
  how it ended: 5xx and 429 are failures.
- timeout (``TimeoutLayer``): ``arm`` bounds the attempt on the layer's
  ``Watchdog``, whose ``release`` ends the bound and says whether it cut the
  attempt, which then fails with ``AttemptTimeoutError`` before the breaker
  judges it. In ``session()`` the layer keeps the total for aiohttp too
  (``bounds_body``): ``bound_body`` puts a body still arriving when the
  response is returned on the same watchdog, until the request's expiry.
- propagation (``Propagation``): ``write`` puts the gray tag and the deadline
  header on the attempt.

Each ``*_middleware`` (``_middleware.py``) is a pipeline of one layer;
``session()`` builds one of all of them. A pipeline that lacks a layer
publishes, in context variables, what that layer would read if it came later
as a middleware of its own (the request's expiry, the guarding breaker, the
attempt's bound: ``_shared.py``, with each host's state), so separately
stacked middlewares cooperate as the single pipeline does.

Concurrency: one event loop per session. The host table is filled on first
use; breakers are created under the hub's lock, so racing sessions share one.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, NoReturn

from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse

from resilient.errors import CircuitOpenError
from resilient.http._breaker import HostCircuitOpenError, is_failure, settle_error
from resilient.http._propagation import Propagation
from resilient.http._retry import RetryLayer
from resilient.http._shared import (
    Hosts,
    guarding,
    is_idempotent,
    outer_expiry,
    publish_bound,
    publish_expiry,
    replayable,
)
from resilient.http._timeouts import TOTAL_MARGIN, TimeoutLayer, expired
from resilient.retry import RetryState

if TYPE_CHECKING:
    from resilient.http._breaker import BreakerLayer

__all__ = ["pipeline"]


def pipeline(
    *,
    retry: RetryLayer | None = None,
    breaker: BreakerLayer | None = None,
    timeout: TimeoutLayer | None = None,
    propagation: Propagation | None = None,
) -> ClientMiddlewareType:
    """One aiohttp client middleware running the given layers in the documented order."""
    hosts = Hosts([layer for layer in (retry, breaker, timeout) if layer is not None])
    by_key = hosts.by_key
    # What a later, separate middleware may need from the layers present here.
    expiry_for_later = retry is not None and timeout is None
    guard_for_later = breaker is not None and timeout is None
    bound_for_later = timeout is not None and propagation is None
    statuses = retry.statuses if retry is not None else frozenset[int]()
    # The request's total: fixed when the layers were built, or (a retry
    # middleware alone, without total=) the session's ClientTimeout's.
    session_total = retry is not None and retry.fixed_total is None
    fixed_total = (
        retry.fixed_total if retry is not None else timeout.total if timeout is not None else None
    )
    per_host = breaker is not None and breaker.per_host
    attempt_if_idempotent = timeout is not None and timeout.applies is is_idempotent
    needs_task = timeout is not None or breaker is not None
    bounds_body = timeout is not None and timeout.bounds_body

    async def resilient(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        url = req.url
        host = by_key.get((url.raw_host, url.port)) or hosts.add(req)
        clock = host.clock
        now = clock()
        # The request's expiry: its total budget, retries included, within an
        # expiry published by a retry middleware before this one.
        total = req.session.timeout.total if session_total else fixed_total
        expiry = math.inf if total is None else now + total - TOTAL_MARGIN
        outer = outer_expiry()
        if outer is not None and outer < expiry:
            expiry = outer
        idempotent = is_idempotent(req)
        retryable = False
        if retry is not None:
            if now >= host.deposit_at:  # the batch so far goes into the host's budget
                retry.deposit(host, now)
            host.pending += 1
            retryable = idempotent  # and its body replayable, checked when it comes to that
        bounded = timeout is not None and (
            idempotent if attempt_if_idempotent else timeout.applies(req)
        )
        task = asyncio.current_task(req.loop) if needs_task else None
        published = publish_expiry(expiry) if expiry_for_later else None
        state: RetryState | None = None
        try:
            while True:
                # Before the call: the attempt's bound (no time left: it fails
                # uncounted, never sent), what goes on the wire, then the
                # breaker's admission; from there to the call nothing can fail.
                if per_host:
                    br = host.breaker
                else:
                    br = breaker.pick(req, host) if breaker is not None else None
                bound = watchdog = None
                if timeout is not None:
                    assert task is not None
                    cancelling = task.cancelling()
                    bound = timeout.arm(req, bounded, host, task, now, expiry, br)
                    watchdog = timeout.watchdog
                try:
                    if propagation is not None:
                        propagation.write(req, bound, host.deadline_text)
                    if br is not None:
                        began = now if br._clock is clock else br._clock()
                        ticket = br._begin(began, task)
                except BaseException as exc:
                    if bound is not None and watchdog is not None:
                        watchdog.withdraw(req)  # the attempt will not be made
                    if isinstance(exc, CircuitOpenError):
                        raise HostCircuitOpenError(exc.name, exc.retry_after, exc.reason) from None
                    raise
                published_guard = guarding(br) if guard_for_later and br is not None else None
                published_bound = (
                    publish_bound(now + bound) if bound_for_later and bound is not None else None
                )
                try:
                    response = await handler(req)
                except BaseException as raised:
                    # Inside out: the bound names a timeout, the breaker counts
                    # the attempt, the retry layer decides whether to ask again.
                    error: BaseException = raised
                    cut = watchdog.release(req) if bound is not None and watchdog else None
                    if cut is not None:
                        assert task is not None
                        if task.uncancel() <= cancelling and isinstance(
                            raised, asyncio.CancelledError
                        ):
                            error = expired(req, cut)
                    if br is not None:
                        error = settle_error(br, ticket, began, error, task, HostCircuitOpenError)
                    if retry is None or not retry.worth_retrying(error):
                        _raise(error, raised)
                    host.streak += 1
                    wait = None
                    if retryable and retry is not None and replayable(req):
                        now = clock()
                        state = _record(state, now, None, error)
                        wait = retry.plan(state, None, now, expiry, host)
                    if wait is None:
                        _raise(error, raised)
                    del raised, error
                else:
                    if bound is not None and watchdog is not None:
                        del watchdog.entries[req]  # release(), written out: the success path
                        if watchdog.cut and req in watchdog.cut:
                            watchdog.cut.discard(req)
                            assert task is not None
                            task.uncancel()  # it was cut, but the answer came first
                    status = response.status
                    failed = is_failure(status)
                    ended = clock()
                    if br is not None:
                        br_ended = ended if br._clock is clock else br._clock()
                        br._end(ticket, began, br_ended, failed, task)
                    learned = host.learned
                    if bounded and not failed and learned is not None and ended >= learned.next_at:
                        learned.observe(ended - now, ended)  # a sample is due
                    wait = None
                    if status not in statuses:
                        host.streak = 0
                    else:
                        host.streak += 1
                        if retryable and retry is not None and replayable(req):
                            now = clock()
                            state = _record(state, now, response, None)
                            wait = retry.plan(state, retry.retry_after(response), now, expiry, host)
                    if wait is None:
                        if bounds_body and not response.content.is_eof():
                            assert timeout is not None
                            timeout.bound_body(req, response, expiry)
                        return response
                    response.release()  # the connection goes back before we wait
                finally:
                    if published_guard is not None:
                        published_guard.var.reset(published_guard)
                    if published_bound is not None:
                        published_bound.var.reset(published_bound)
                if wait > 0.0:
                    await asyncio.sleep(wait)
                assert state is not None  # a retry follows a recorded failure
                state.advance(wait)
                now = clock()
        finally:
            if published is not None:
                published.var.reset(published)

    return resilient


def _raise(error: BaseException, raised: BaseException) -> NoReturn:
    """Raise the attempt's outcome: what aiohttp raised, or what a layer made of it."""
    if error is raised:
        raise raised
    if error.__cause__ is None and not error.__suppress_context__:
        raise error from raised
    raise error


def _record(
    state: RetryState | None, now: float, result: object, exc: BaseException | None
) -> RetryState:
    """The retry state (built on the first failure only) with this attempt's outcome."""
    if state is None:
        state = RetryState(None, (), {}, now)
    state.record(now, result, exc)
    return state
