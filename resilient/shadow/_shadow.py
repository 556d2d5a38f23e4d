"""``Shadow``: run a candidate beside the primary for a sample of calls, and compare.

One idea: the caller gets the primary's result or exception at the
primary's latency, exactly as without shadowing; the candidate runs in the
background, bounded by its own timeout, bulkhead and breaker, and what it
returned is compared on the reporter's thread (``_compare``) and recorded.

The caller's path, in order:

1. ``sample`` 0: straight to the primary (one attribute test).
2. The draw: the gray percentage rule's hash of the trace id (random
   without a trace). Not drawn: straight to the primary.
3. Admission of the mirror: the candidate's breaker, then its bulkhead (no
   queue). Refused: the mirror is dropped and recorded, never queued; the
   primary runs as if unshadowed.
4. The candidate starts (a task, or a job for a worker thread), then the
   primary runs; its outcome settles the primary's side.

The candidate's task or thread runs in a copy of the caller's context (the
gray tag and the trace follow it) without the caller's deadline: its own
``timeout`` bounds it. An async candidate is cancelled at its timeout, and
at once when the caller is cancelled (the mirror is then recorded as
dropped, ``cancelled``). A sync candidate cannot be interrupted: at its
timeout the reporter settles it as a ``TimeoutError``, and its thread keeps
its bulkhead slot until it returns, so a hanging sync candidate fills the
bulkhead and later mirrors are dropped, not queued.

Noise: a ``noise`` share of mirrored calls also calls the primary a second
time, in the background under the same limits (skipped when the bulkhead is
full); shadow only operations that may safely run twice.

Results are normalised after the caller has them: a result the caller
mutates at once may be compared mutated. Return fresh values (most do).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import math
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar, cast

from opentelemetry.metrics import MeterProvider

from resilient.breaker import CircuitBreaker
from resilient.bulkhead import Bulkhead
from resilient.config import BreakerConfig
from resilient.deadline import _scope
from resilient.errors import ConfigError
from resilient.guard import Permit
from resilient.shadow._compare import Compare, Judge
from resilient.shadow._mirror import CANCELLED, CANDIDATE, PRIMARY, SECONDARY, Mirror, Outcome
from resilient.shadow._otel import caller_span, report
from resilient.shadow._paths import Patterns
from resilient.shadow._reporter import Reporter, reporter
from resilient.shadow._sinks import Sink, default_sink
from resilient.shadow._trace import SCALE, current_gray, draw
from resilient.shadow._workers import Workers

__all__ = ["Shadow"]

P = ParamSpec("P")
R = TypeVar("R")

_OPERATION = re.compile(r"[A-Za-z0-9._:/-]{1,190}")
_OUTCOMES = ("match", "mismatch", "noise", "error", "dropped")


def _share(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(
            f"{field} must be a number from 0 to 1, got {value!r}", field=field, value=value
        )
    return float(value)


class Shadow:
    """Mirror a sample of calls to ``candidate`` and record how it compared; ``@shadow``.

    Args:
        operation: the name records and metrics carry (``[A-Za-z0-9._:/-]``,
            up to 190); the candidate's breaker is ``shadow:<operation>``.
        candidate: called with the primary's arguments; async for an async
            primary, sync for a sync one (it then runs on a worker thread).
        sample: the share of calls mirrored, 0 to 1, by the gray
            percentage rule's sha256 of the trace id (random without one).
        sink: where records go (default: the process's ``JsonlSink`` under
            ``$RESILIENT_SHADOW_DIR`` or ``./.resilient/``).
        ignore: JSON paths never compared (``[*]`` any index, ``.*`` any key).
        compare: ``compare(primary, candidate)`` returning the differing paths,
            instead of the JSON diff.
        noise: the share of mirrored calls that call the primary again to
            learn noisy paths (0 turns it off).
        timeout: the candidate's own bound, seconds.
        bulkhead: candidates (and second primaries) in flight at most: a
            number or a ``Bulkhead`` (its queue is not used).
        breaker: the candidate's breaker: ``True`` (one of its own, default
            config), a ``BreakerConfig``, a ``CircuitBreaker``, or ``None``.
        meter_provider: where ``resilient.shadow.calls`` goes (the global one).
        rng, clock, wall: the draws, monotonic seconds (the latencies
            recorded) and epoch seconds (injected by tests). Timeouts run on
            real time: the event loop's, or the reporter's for a sync candidate.

    Raises:
        ConfigError: an option is out of range (named in the message).

    ``counts`` holds this process's mirrors by outcome; ``flush()`` (sync)
    and ``aflush()`` (async) wait until every mirror started has been
    recorded.
    """

    def __init__(
        self,
        operation: str,
        candidate: Callable[..., Any],
        *,
        sample: float = 0.1,
        sink: Sink | None = None,
        ignore: Iterable[str] = (),
        compare: Compare | None = None,
        noise: float = 0.05,
        timeout: float = 1.0,
        bulkhead: int | Bulkhead = 16,
        breaker: bool | BreakerConfig | CircuitBreaker | None = True,
        meter_provider: MeterProvider | None = None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        _reporter: Reporter | None = None,
        _secondary: Callable[..., Any] | None = None,
    ) -> None:
        if not isinstance(operation, str) or not _OPERATION.fullmatch(operation):
            raise ConfigError(
                f"operation must match [A-Za-z0-9._:/-]{{1,190}}, got {operation!r}",
                field="operation",
                value=operation,
            )
        if not callable(candidate):
            raise ConfigError(f"candidate must be callable, got {candidate!r}", field="candidate")
        if isinstance(ignore, str):
            raise ConfigError(
                "ignore must be a collection of JSON paths, not one string", field="ignore"
            )
        try:
            patterns = Patterns(ignore)
        except ValueError as exc:
            raise ConfigError(f"ignore: {exc}", field="ignore", value=ignore) from None
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (0 < timeout < math.inf)
        ):
            raise ConfigError(
                f"timeout must be a number of seconds > 0, got {timeout!r}",
                field="timeout",
                value=timeout,
            )
        if compare is not None and not callable(compare):
            raise ConfigError(f"compare must be callable, got {compare!r}", field="compare")
        self.operation = operation
        self.candidate = candidate
        self.sample = _share("sample", sample)
        self.noise = _share("noise", noise)
        self.timeout = float(timeout)
        self.bulkhead = bulkhead if isinstance(bulkhead, Bulkhead) else Bulkhead(bulkhead)
        self.breaker = _breaker(operation, breaker)
        self.sink: Sink = sink if sink is not None else default_sink()
        self.judge = Judge(operation, patterns, compare)
        self._secondary = _secondary
        self.counts: dict[str, int] = dict.fromkeys(_OUTCOMES, 0)
        self._meter_provider = meter_provider
        self._rng = rng
        self._clock = clock
        self._wall = wall
        self._reporter = _reporter if _reporter is not None else reporter()
        self._workers: Workers | None = None
        self._open: set[Mirror] = set()
        self._open_lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the share

    @property
    def sample(self) -> float:
        """The share of calls mirrored (0 to 1); may be changed live."""
        return self._threshold / SCALE

    @sample.setter
    def sample(self, value: float) -> None:
        self._threshold = round(_share("sample", value) * SCALE)

    # ------------------------------------------------------------------ decorating

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Shadow ``fn`` (sync or async, chosen once with ``inspect``)."""
        if inspect.iscoroutinefunction(fn):
            if not inspect.iscoroutinefunction(self.candidate):
                raise ConfigError("an async primary needs an async candidate", field="candidate")
            wrapper = cast("Callable[P, R]", self._wrap_async(fn))
        else:
            if inspect.iscoroutinefunction(self.candidate):
                raise ConfigError("a sync primary needs a sync candidate", field="candidate")
            wrapper = self._wrap_sync(fn)
        return functools.update_wrapper(wrapper, fn)

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        shadow, clock = self, self._clock

        async def shadowed(*args: P.args, **kwargs: P.kwargs) -> R:
            if not shadow._threshold:
                return await fn(*args, **kwargs)
            mirror = shadow._admit(fn, args, kwargs, True)
            if mirror is None:
                return await fn(*args, **kwargs)
            return await primary_async(mirror, fn(*args, **kwargs), clock)

        return shadowed

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        shadow, clock = self, self._clock

        def shadowed(*args: P.args, **kwargs: P.kwargs) -> R:
            if not shadow._threshold:
                return fn(*args, **kwargs)
            mirror = shadow._admit(fn, args, kwargs, False)
            if mirror is None:
                return fn(*args, **kwargs)
            started = clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                mirror.settle(PRIMARY, Outcome(None, exc, clock() - started))
                raise
            mirror.settle(PRIMARY, Outcome(result, None, clock() - started))
            return result

        return shadowed

    # ------------------------------------------------------------------ admission

    def _admit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], is_async: bool
    ) -> Mirror | None:
        """Draw and admit a mirror and start its background calls; None: run unshadowed."""
        mirrored, trace_id = draw(self._threshold, self._rng)
        if not mirrored:
            return None
        gray = current_gray()
        permit = None
        if self.breaker is not None:
            permit = self.breaker.try_acquire()  # refused: no exception built
            if permit is None:
                self._drop(trace_id, gray, "breaker")
                return None
        if not self.bulkhead.try_enter():  # never its queue: a mirror that must wait is dropped
            if permit is not None:
                permit.release()
            self._drop(trace_id, gray, "bulkhead")
            return None
        # No room for a noise sample: compare without one.
        secondary = bool(self.noise) and self._rng() < self.noise and self.bulkhead.try_enter()
        mirror = Mirror(
            ts=self._wall(),
            trace_id=trace_id,
            gray=gray,
            span=caller_span(),
            secondary=secondary,
            on_done=self._done,
            args=args,
            kwargs=kwargs,
        )
        with self._open_lock:
            self._open.add(mirror)
        context = contextvars.copy_context()
        context.run(
            _scope.set, None
        )  # the candidate has its own timeout, not the caller's deadline
        if is_async:
            runs = [self._run_async(mirror, CANDIDATE, self.candidate, permit)]
            if secondary:
                runs.append(self._run_async(mirror, SECONDARY, self._secondary or fn, None))
            loop = asyncio.get_running_loop()
            tasks = tuple(loop.create_task(run, context=context) for run in runs)
            mirror.tasks = tasks
            for task in tasks:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        else:
            workers = self._workers
            if workers is None:
                workers = self._workers = Workers(self.bulkhead.limit)
            # The timeout runs on the reporter's clock (real time), not on ``clock``.
            deadline = self._reporter.now() + self.timeout
            workers.submit(
                functools.partial(
                    context.run, self._run_sync, mirror, CANDIDATE, self.candidate, permit
                )
            )
            self._reporter.call_at(
                deadline, functools.partial(self._time_out, mirror, CANDIDATE, permit)
            )
            if secondary:
                again = self._secondary or fn
                workers.submit(
                    functools.partial(
                        context.copy().run, self._run_sync, mirror, SECONDARY, again, None
                    )
                )
                self._reporter.call_at(
                    deadline, functools.partial(self._time_out, mirror, SECONDARY, None)
                )
        return mirror

    # ------------------------------------------------------------------ the background calls

    async def _run_async(
        self, mirror: Mirror, side: int, fn: Callable[..., Awaitable[Any]], permit: Permit | None
    ) -> None:
        clock = self._clock
        started = clock()
        try:
            async with asyncio.timeout(self.timeout):
                value = await fn(*mirror.args, **mirror.kwargs)
        except asyncio.CancelledError:  # the caller's (our own timeout raises TimeoutError)
            _settle(mirror, side, permit, CANCELLED)
        except Exception as exc:
            _settle(mirror, side, permit, Outcome(None, exc, clock() - started))
        else:
            _settle(mirror, side, permit, Outcome(value, None, clock() - started))
        finally:
            self.bulkhead.__exit__(None, None, None)

    def _run_sync(
        self, mirror: Mirror, side: int, fn: Callable[..., Any], permit: Permit | None
    ) -> None:
        clock = self._clock
        started = clock()
        try:
            value = fn(*mirror.args, **mirror.kwargs)
        except Exception as exc:
            _settle(mirror, side, permit, Outcome(None, exc, clock() - started))
        else:
            _settle(mirror, side, permit, Outcome(value, None, clock() - started))
        finally:
            self.bulkhead.__exit__(None, None, None)

    def _time_out(self, mirror: Mirror, side: int, permit: Permit | None) -> None:
        """A sync side still running at its timeout (on the reporter's thread)."""
        _settle(mirror, side, permit, Outcome(None, TimeoutError("timed out"), self.timeout))

    # ------------------------------------------------------------------ recording

    def _done(self, mirror: Mirror) -> None:
        """Every side settled: judge and record on the reporter's thread."""
        if not self._reporter.submit(functools.partial(self._record, mirror)):
            self.counts["dropped"] += 1  # the reporter is overwhelmed: nothing can be written
            self._close(mirror)

    def _record(self, mirror: Mirror) -> None:
        try:
            record = self.judge.record(mirror)
            self._keep(record, mirror.span)
        finally:
            self._close(mirror)

    def _drop(self, trace_id: str | None, gray: str | None, reason: str) -> None:
        # The record is built on the reporter's thread: the caller only takes the time.
        job = functools.partial(
            self._keep_dropped, self._wall(), trace_id, gray, reason, caller_span()
        )
        if not self._reporter.submit(job):
            self.counts["dropped"] += 1

    def _keep_dropped(
        self, ts: float, trace_id: str | None, gray: str | None, reason: str, span: Any
    ) -> None:
        self._keep(self.judge.dropped(ts, trace_id, gray, reason), span)

    def _keep(self, record: dict[str, Any], span: Any) -> None:
        outcome = record["outcome"]
        self.counts[outcome] += 1
        self.sink.write(record)
        attributes: dict[str, str | int | float] = {"diffs": len(record["diffs"])}
        for side in ("primary", "candidate"):
            latency = record[side]["latency_ms"]
            if latency is not None:
                attributes[f"{side}.latency_ms"] = latency
        if record["trace_id"] is not None:
            attributes["trace_id"] = record["trace_id"]
        if record["dropped"] is not None:
            attributes["dropped"] = record["dropped"]
        report(self._meter_provider, span, self.operation, outcome, attributes)

    def _close(self, mirror: Mirror) -> None:
        with self._open_lock:
            self._open.discard(mirror)

    # ------------------------------------------------------------------ waiting

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (sync) until every mirror started has been recorded; False on timeout."""
        give_up = time.monotonic() + timeout
        while self._open:
            if time.monotonic() >= give_up:
                return False
            time.sleep(0.002)
        return self._reporter.drain(max(0.0, give_up - time.monotonic()))

    async def aflush(self, within: float = 10.0) -> bool:
        """``flush`` for async code (``within`` seconds): the candidates' tasks run meanwhile."""
        give_up = time.monotonic() + within
        while self._open:
            if time.monotonic() >= give_up:
                return False
            await asyncio.sleep(0.002)
        return await asyncio.to_thread(self._reporter.drain, max(0.0, give_up - time.monotonic()))

    def __repr__(self) -> str:
        return (
            f"<Shadow {self.operation!r} sample={self.sample:g} timeout={self.timeout:g} "
            f"{self.bulkhead!r} counts={self.counts}>"
        )


def _settle(mirror: Mirror, side: int, permit: Permit | None, outcome: Outcome) -> None:
    """Settle ``side``; if this settled it, tell the candidate's breaker how it went."""
    if mirror.settle(side, outcome) and permit is not None:
        if outcome is CANCELLED:
            permit.release()  # a cancelled candidate decides nothing
        elif outcome.error is not None:
            permit.error(outcome.error)
        else:
            permit.success()


async def primary_async(
    mirror: Mirror,
    call: Awaitable[R],
    clock: Callable[[], float],
    keep: Callable[[R], object] | None = None,
    *,
    started: float | None = None,
    again: Callable[[BaseException], bool] | None = None,
) -> R:
    """Await the primary and settle its side; its result or exception goes to the caller as is.

    ``keep`` turns the result into what is compared (the HTTP shadow's
    normalised response); by default the result itself is compared.
    ``started`` is when the primary was first called (default: now), and
    ``again(exc)`` True means the primary will be called again for this
    same call (aiohttp resending on a fresh connection): its side stays
    open for that call to settle.
    """
    if started is None:
        started = clock()
    try:
        result = await call
        kept = result if keep is None else keep(result)
    except asyncio.CancelledError:
        mirror.cancel()
        raise
    except BaseException as exc:
        if again is None or not again(exc):
            mirror.settle(PRIMARY, Outcome(None, exc, clock() - started))
        raise
    mirror.settle(PRIMARY, Outcome(kept, None, clock() - started))
    return result


def _breaker(
    operation: str, value: bool | BreakerConfig | CircuitBreaker | None
) -> CircuitBreaker | None:
    if value is None or value is False:
        return None
    if isinstance(value, CircuitBreaker):
        return value
    if value is True:
        return CircuitBreaker(f"shadow:{operation}")
    if isinstance(value, BreakerConfig):
        return CircuitBreaker(f"shadow:{operation}", value)
    raise ConfigError(
        f"breaker must be True, a BreakerConfig, a CircuitBreaker or None, got {value!r}",
        field="breaker",
        value=value,
    )
