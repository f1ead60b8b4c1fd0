"""The dispatcher: delivers the outbox, group by group, with retries.

`run_once()` does one pass and is what tests drive; `BackgroundDispatcher` runs passes on a
thread inside `bulwark run`, `serve` and `replay --alerts`. Per channel, notifications leave
in the order they were written: while the oldest one waits for a retry, the channel waits.
Delivery is at least once (a crash after sending and before recording resends); receivers
make it effectively once by PagerDuty's dedup_key and the webhook's Idempotency-Key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from agent.alerts import channels
from agent.alerts.channels.base import Item, Message, Outcome, Result, make_client, secrets_of
from agent.alerts.outbox import enqueue_repeats
from agent.config import AlertSettings
from storage.db import Database, DatabaseUnavailable
from storage.enums import NotificationState
from storage.models import Notification, Silence
from storage.unit_of_work import transaction

log = logging.getLogger(__name__)

REPEAT_CHECK_EVERY = 30.0  # seconds between looks for incidents due a repeat
MAX_ROWS_PER_MESSAGE = 200  # a group larger than this goes out in several messages


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass did (for tests and logs)."""

    delivered: int = 0
    failed: int = 0
    silenced: int = 0
    retrying: int = 0


class Dispatcher:
    def __init__(
        self,
        db: Database,
        alerts: AlertSettings,
        clock: Callable[[], float] = time.time,
        client: httpx.Client | None = None,
    ) -> None:
        self.db = db
        self.alerts = alerts
        self.clock = clock
        self.client = client or make_client(alerts.timeout)
        self._next_repeat_check = 0.0
        self._recent_events: dict[str, deque[float]] = {}  # PagerDuty send times, last minute
        # Any channel's secret, scrubbed from any channel's errors (receivers echo things).
        self._secrets = secrets_of(list(alerts.channels.values()))

    def close(self) -> None:
        self.client.close()

    def run_once(self) -> Pass:
        """Enqueues due repeats, then sends every due group once."""
        now = self.clock()
        if now >= self._next_repeat_check:
            self._next_repeat_check = now + REPEAT_CHECK_EVERY
            self.db.retrying(lambda: self._repeats(now))
        rows = self.db.retrying(lambda: self._claimable(now))
        totals = Pass()
        by_channel: dict[str, list[Notification]] = {}
        for row in rows:
            by_channel.setdefault(row.channel, []).append(row)
        for name, pending in by_channel.items():
            totals = _add(totals, self._channel(name, pending, now))
        return totals

    def _repeats(self, now: float) -> None:
        with transaction(self.db) as uow:
            enqueue_repeats(uow, self.alerts, now)

    def _claimable(self, now: float) -> list[Notification]:
        with transaction(self.db) as uow:
            return uow.outbox.claimable(now)

    def _channel(self, name: str, rows: list[Notification], now: float) -> Pass:
        head = rows[0]
        if head.attempts > 0 and head.next_attempt_at > now:
            return Pass()  # in backoff: later notifications wait, so order is kept
        totals = Pass()
        for group in self._groups(name, rows, now):
            for start in range(0, len(group), MAX_ROWS_PER_MESSAGE):
                result = self._deliver(name, group[start : start + MAX_ROWS_PER_MESSAGE], now)
                totals = _add(totals, result)
                if result.retrying:
                    return totals  # the channel waits for this retry: keep its order
        return totals

    def _groups(self, name: str, rows: list[Notification], now: float) -> list[list[Notification]]:
        """The due messages of a channel, oldest first. Chat and webhook channels get one
        message per model with everything pending for it once any of it is due; PagerDuty
        takes one event per notification anyway, so it gets them strictly in order, up to
        the first one still waiting out its group_wait."""
        settings = self.alerts.channels.get(name)
        if settings is not None and settings.type == "pagerduty":
            due: list[Notification] = []
            for row in rows[: self._pagerduty_budget(name, now)]:
                if row.next_attempt_at > now:
                    break
                due.append(row)
            return [due] if due else []
        groups: dict[str, list[Notification]] = {}
        for row in rows:
            groups.setdefault(row.group_key, []).append(row)
        return [g for g in groups.values() if min(r.next_attempt_at for r in g) <= now]

    def _pagerduty_budget(self, name: str, now: float) -> int:
        """Events this channel may still send in the current minute."""
        recent = self._recent_events.setdefault(name, deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        return max(0, self.alerts.pagerduty_per_minute - len(recent))

    def _deliver(self, name: str, rows: list[Notification], now: float) -> Pass:
        settings = self.alerts.channels.get(name)
        if settings is None:
            return self._settle(
                rows, NotificationState.FAILED, now, f"channel {name!r} is not configured"
            )
        held, rows = self._silenced(rows, now)
        done = Pass()
        if held:
            done = self._settle(held, NotificationState.SILENCED, now, "silenced")
        if not rows:
            return done
        ids = [r.id for r in rows]
        # Long enough for every request of the message; a crashed sender's claim lapses.
        requests = len(rows) if settings.type == "pagerduty" else 1
        lease = now + self.alerts.timeout * (requests + 2) + 5
        claimed = self.db.retrying(lambda: self._claim(ids, now, lease))
        if not claimed:
            return done  # another dispatcher is sending these
        message = Message(
            channel=name,
            group=rows[0].group_key,
            items=[self._item(r) for r in rows],
            max_listed=self.alerts.max_listed,
        )
        result = channels.send(self.client, settings, message, self._secrets)
        if settings.type == "pagerduty":
            self._recent_events.setdefault(name, deque()).extend([now] * len(rows))
        return _add(done, self.db.retrying(lambda: self._record(rows, result, now)))

    def _silenced(
        self, rows: list[Notification], now: float
    ) -> tuple[list[Notification], list[Notification]]:
        silences = self.db.retrying(lambda: self._active_silences(now))
        if not silences:
            return [], rows
        held: list[Notification] = []
        rest: list[Notification] = []
        for row in rows:
            c = row.content or {}
            hit = row.incident_id is not None and any(
                s.matches(str(c.get("model")), str(c.get("kind")), str(c.get("subject")), now)
                for s in silences
            )
            (held if hit else rest).append(row)
        return held, rest

    def _active_silences(self, now: float) -> list[Silence]:
        with transaction(self.db) as uow:
            return uow.outbox.active_silences(now)

    def _claim(self, ids: list[int], now: float, until: float) -> bool:
        try:
            with transaction(self.db) as uow:
                if not uow.outbox.claim(ids, now, until):
                    raise _Lost  # roll back the part we did claim
        except _Lost:
            return False
        return True

    def _item(self, row: Notification) -> Item:
        link = None
        if self.alerts.incident_url and row.incident_id is not None:
            link = self.alerts.incident_url.replace("{id}", str(row.incident_id))
        return Item(row.id, row.action, row.reason, row.content or {}, row.dedup_key, link)

    def _record(self, rows: list[Notification], result: Result, now: float) -> Pass:
        """Stores the outcome: delivered, rejected for good, or a retry time (or, past
        give_up_after, failed for good)."""
        delivered = failed = retrying = 0
        with transaction(self.db) as uow:
            for row in uow.outbox.get_many([r.id for r in rows]):
                row.claimed_until = None
                if result.outcome is Outcome.DELIVERED or row.id in result.delivered_ids:
                    row.state, row.settled_at, row.last_error = (
                        NotificationState.DELIVERED,
                        now,
                        None,
                    )
                    row.attempts += 1
                    delivered += 1
                    continue
                row.attempts += 1
                row.last_error = result.detail
                if result.outcome is Outcome.REJECTED:
                    row.state, row.settled_at = NotificationState.FAILED, now
                    failed += 1
                    log.warning(
                        "notification %d to channel %s rejected, not retried: %s",
                        row.id,
                        row.channel,
                        result.detail,
                    )
                elif now - row.created_at >= self.alerts.give_up_after:
                    row.state, row.settled_at = NotificationState.FAILED, now
                    row.last_error = f"gave up after {row.attempts} attempts: {result.detail}"
                    failed += 1
                    log.error(
                        "notification %d to channel %s failed for good after %d attempts "
                        "over %.0fs: %s",
                        row.id,
                        row.channel,
                        row.attempts,
                        now - row.created_at,
                        result.detail,
                    )
                else:
                    row.next_attempt_at = now + self._delay(row.attempts, result.retry_after)
                    retrying += 1
                    log.info(
                        "notification %d to channel %s: attempt %d failed, next in %.1fs: %s",
                        row.id,
                        row.channel,
                        row.attempts,
                        row.next_attempt_at - now,
                        result.detail,
                    )
        return Pass(delivered=delivered, failed=failed, retrying=retrying)

    def _delay(self, attempts: int, retry_after: float | None) -> float:
        backoff = min(self.alerts.backoff_max, self.alerts.backoff_initial * 2 ** (attempts - 1))
        if retry_after is not None:
            return max(retry_after, self.alerts.backoff_initial)  # the receiver said when
        return backoff

    def _settle(
        self, rows: list[Notification], state: NotificationState, now: float, why: str
    ) -> Pass:
        def write() -> None:
            with transaction(self.db) as uow:
                for row in uow.outbox.get_many([r.id for r in rows]):
                    if row.state == NotificationState.PENDING:
                        row.state, row.settled_at, row.last_error = state, now, why

        self.db.retrying(write)
        if state == NotificationState.FAILED:
            log.error("%d notifications failed: %s", len(rows), why)
            return Pass(failed=len(rows))
        return Pass(silenced=len(rows))

    def wait_settled(self, after_id: int, timeout: float, sleep: float = 0.05) -> dict[str, int]:
        """Runs passes until every notification with id > after_id is settled, or timeout
        (wall clock) passes; returns the count per state of those notifications."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.db.retrying(lambda: self._counts(after_id))
            if not counts.get(NotificationState.PENDING) or time.monotonic() >= deadline:
                return counts
            self.run_once()
            time.sleep(min(sleep, max(0.0, deadline - time.monotonic())))

    def _counts(self, after_id: int) -> dict[str, int]:
        with transaction(self.db) as uow:
            return uow.outbox.count_states(after_id)


class BackgroundDispatcher:
    """Runs `Dispatcher.run_once` every poll_interval on a daemon thread until `stop()`."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bulwark-alerts", daemon=True)

    def start(self) -> BackgroundDispatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatcher.run_once()
            except DatabaseUnavailable:
                pass  # an outage: the database handle logs when it starts and ends
            except Exception:  # keep delivering: one bad pass must not end alerting
                log.exception("alert dispatcher pass failed")
            self._stop.wait(self.dispatcher.alerts.poll_interval)


class _Lost(Exception):
    """Another dispatcher claimed some of the rows first."""


def _add(a: Pass, b: Pass) -> Pass:
    return Pass(
        a.delivered + b.delivered,
        a.failed + b.failed,
        a.silenced + b.silenced,
        a.retrying + b.retrying,
    )


@dataclass(frozen=True, slots=True)
class Settled:
    """What became of the notifications a run caused (`replay --alerts`)."""

    counts: dict[str, int]

    @property
    def pending(self) -> int:
        return self.counts.get(NotificationState.PENDING, 0)

    def describe(self) -> str:
        parts = [
            f"{self.counts.get(s, 0)} {s}"
            for s in (
                NotificationState.DELIVERED,
                NotificationState.FAILED,
                NotificationState.SILENCED,
                NotificationState.PENDING,
            )
        ]
        return "notifications: " + ", ".join(parts)


class Delivering:
    """Delivers in the background while a finite run works, then waits (bounded by
    alerts.replay_wait) until the notifications written meanwhile are settled."""

    def __init__(self, db: Database, alerts: AlertSettings) -> None:
        self.dispatcher = Dispatcher(db, alerts)
        self.after_id = db.retrying(lambda: self._max_id(db))
        self.runner = BackgroundDispatcher(self.dispatcher)
        self.settled: Settled | None = None

    @staticmethod
    def _max_id(db: Database) -> int:
        with transaction(db) as uow:
            return uow.outbox.max_id()

    def __enter__(self) -> Delivering:
        self.runner.start()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.runner.stop()
        try:
            if exc_type is None:
                counts = self.dispatcher.wait_settled(
                    self.after_id, self.dispatcher.alerts.replay_wait
                )
                self.settled = Settled(counts)
        finally:
            self.dispatcher.close()
