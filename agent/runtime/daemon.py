"""`bulwark run`: consume Kafka at least once, as one member of a consumer group.

Each polled batch goes through the pipeline, which stores the incidents, evidence and dead
letters it produced (idempotent by source position). Every `daemon.checkpoint_interval`
seconds, at a rebalance and at shutdown, the detector state and the next offset of every
partition processed since the last checkpoint are written in ONE transaction; only then are
the offsets committed to Kafka. A crash therefore re-processes at most the records since the
last checkpoint, from the state that goes with them, and the idempotent writes turn the
repeated findings into no-ops.

The database position is the truth: on assignment a partition's state is restored and the
consumer seeks to the stored offset; Kafka's committed offset is only the fallback (and what
lag monitors see). kafka-python runs rebalance callbacks on its IO thread, where blocking
consumer calls (commit) are forbidden, so the callbacks only touch the database and the
daemon's own bookkeeping, under a lock shared with batch processing.

A database outage of any length is ridden out, not fatal. When a write, a checkpoint or a
restore finds the database unreachable (after `Database.retrying`'s short retries), the
detector state in memory may be ahead of what was stored, so it is no longer trusted:
consumption of every owned partition is paused (the consumer keeps polling, so it stays in
its group and keeps its partitions), the database is probed with capped exponential backoff,
and `/readyz` and `bulwark_ready` say not ready. Once the database answers, the daemon does
what a restart would do, without leaving the group: a fresh pipeline restores each partition's
checkpoint, the consumer seeks to the checkpointed offsets, and consumption resumes. The
idempotent writes make the re-processed records no-ops, so nothing is lost or doubled. A
permanent database error (bad credentials, no such database, schema missing) ends the daemon
with a one-line reason instead.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from kafka.consumer.fetcher import RecordTooLargeError
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from agent.config import ConfigError, Settings
from agent.observability import metrics
from agent.runtime.pipeline import Pipeline
from storage.db import Database, DatabaseUnavailable
from streams.events import DeadLetter, Position
from streams.kafka import (
    ConsumerRebalanceListener,
    dead_letter_envelope,
    has_metadata,
    make_consumer,
    make_producer,
    not_yet_processed,
    to_records,
)

log = logging.getLogger(__name__)

# Kafka calls at a checkpoint or at shutdown wait at most this long, so that a dead broker
# cannot hold SIGTERM past daemon.shutdown_timeout (poll + commit + close stay well below 10 s).
COMMIT_TIMEOUT_MS = 2000
SUMMARY_INTERVAL = 60.0  # seconds between progress lines in the log
STALL_CHECK_INTERVAL = 10.0  # seconds between wall-clock checks for silent streams


def check_settings(settings: Settings) -> None:
    """What `bulwark run` needs beyond what `Settings` validates."""
    if not settings.kafka.topics:
        raise ConfigError(
            "invalid config key 'kafka.topics': 'bulwark run' needs at least one topic "
            "(or BULWARK_KAFKA_TOPICS)"
        )


class Daemon:
    def __init__(self, settings: Settings, database: Database) -> None:
        check_settings(settings)
        self.settings = settings
        self.database = database
        self.kafka = settings.kafka
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # batch processing vs. rebalance callbacks
        self.owned: set[TopicPartition] = set()
        self.next_offsets: dict[TopicPartition, int] = {}
        self.dirty: set[TopicPartition] = set()  # processed since the last checkpoint
        self.uncommitted: dict[TopicPartition, int] = {}  # checkpointed, not yet in Kafka
        self.callback_error: BaseException | None = None
        self.commit_failures = 0
        self.reached = False  # the cluster answered at least once
        self.unreachable_since: float | None = None
        self.next_unreachable_log = 0.0
        self.consumer: Any = None
        self.producer: Any = None
        # Where each owned partition's processing began since it was assigned: where it is
        # replayed from after an outage if it has no checkpoint yet.
        self.replay_from: dict[TopicPartition, int] = {}
        # A database outage: since when (monotonic), its probes so far, the next probe time.
        self.db_down_since: float | None = None
        self.db_probes = 0
        self.next_db_probe = 0.0
        self.pipeline = self._new_pipeline()
        metrics.READY.set(value=0.0)
        metrics.DATABASE_REACHABLE.set(value=1.0)

    def _new_pipeline(self) -> Pipeline:
        return Pipeline(
            self.settings,
            self.database,
            consumer=self.kafka.state_source,
            notify=True,  # incident changes queue notifications (delivered by the dispatcher)
            state_key=self.kafka.state_key,
            on_dead_letters=self._forward_dead_letters,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Consumes until SIGTERM/SIGINT; returns after a clean shutdown."""
        self._install_signal_handlers()
        self.consumer = self._connect()
        if self.consumer is None:
            log.info("stopped before Kafka was reachable")
            return
        if self.kafka.dead_letter_topic:
            self.producer = make_producer(self.kafka)
        self.consumer.subscribe(topics=self.kafka.topics, listener=_Rebalance(self))
        log.info(
            "consuming %s as group %r from %s",
            ", ".join(self.kafka.topics),
            self.kafka.group_id,
            ", ".join(self.kafka.bootstrap_servers),
        )
        self._loop()
        self._shutdown()

    def _loop(self) -> None:
        interval = self.settings.daemon.checkpoint_interval
        next_checkpoint = next_commit = time.monotonic() + interval
        next_summary = time.monotonic() + SUMMARY_INTERVAL
        next_stall_check = time.monotonic() + STALL_CHECK_INTERVAL
        failures = 0
        while not self.stopping.is_set():
            try:
                polled = self.consumer.poll(
                    timeout_ms=self.kafka.poll_timeout_ms, max_records=self._poll_size()
                )
            except RecordTooLargeError as exc:
                self._raise_callback_error()
                if self.db_down_since is None:
                    try:
                        self._skip_unfetchable(exc)
                    except DatabaseUnavailable as down:
                        self._pause_for_database(down)
                continue
            except KafkaError as exc:
                self._raise_callback_error()
                failures += 1
                delay = self._backoff(failures)
                log.warning("Kafka poll failed (%s); retrying in %.1fs", exc, delay)
                self.stopping.wait(delay)
                continue
            self._raise_callback_error()
            failures = 0
            now = time.monotonic()
            self._watch_connection(now)
            if self.db_down_since is not None:
                # Paused: the poll above only kept the group membership (anything it returned
                # for a partition assigned meanwhile is read again after the rewind).
                if now >= self.next_db_probe:
                    self._try_resume(now)
            else:
                try:
                    if self.database.down_for is not None and now >= self.next_db_probe:
                        # Another thread (alerts, jobs) found the database down, maybe while
                        # this one idles: check it, and pause as for a failed write if so.
                        self.next_db_probe = now + self._backoff(2)
                        self.database.probe()
                    if polled:
                        self._process(polled)
                    checkpointed = now >= next_checkpoint
                    if checkpointed:
                        next_checkpoint = now + interval
                        self._save()
                except DatabaseUnavailable as exc:
                    self._pause_for_database(exc)
                    continue
                if checkpointed and now >= next_commit:
                    # A failing commit (broker down) is retried later and later; the database
                    # checkpoints go on meanwhile.
                    committed = self._commit()
                    self.commit_failures = 0 if committed else self.commit_failures + 1
                    next_commit = now + (0 if committed else self._backoff(self.commit_failures))
            self._publish_readiness()
            if now >= next_summary:
                self._log_summary()
                next_summary = now + SUMMARY_INTERVAL
            if now >= next_stall_check and self.db_down_since is None:
                next_stall_check = now + STALL_CHECK_INTERVAL
                try:
                    with self.lock:  # streams silent on the wall clock: stream_stalled
                        self.pipeline.check_stalls(time.time())
                except DatabaseUnavailable as exc:
                    self._pause_for_database(exc)

    def _shutdown(self) -> None:
        if self.db_down_since is not None:
            # What is in memory was never stored: the last checkpoint is where a restart resumes.
            log.info("shutting down while the database is unreachable: no checkpoint, close")
        else:
            log.info("shutting down: checkpoint, commit, close")
            try:
                self._save()
            except DatabaseUnavailable as exc:
                log.warning(
                    "final checkpoint failed (%s); a restart resumes from the previous one", exc
                )
                self.db_down_since = time.monotonic()
            if not self.commit_failures and self.db_down_since is None:
                # Else the broker or the database is down: the database has the positions.
                self._commit(probe=False)
        try:
            self.consumer.close(autocommit=False, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            log.warning("closing the Kafka consumer failed: %s", exc)
        if self.producer is not None:
            self.producer.close(timeout=COMMIT_TIMEOUT_MS / 1000)
        self._log_summary()
        log.info("stopped cleanly")

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.stopping.is_set():
                log.warning("%s again: exiting at once", name)
                os._exit(1)
            log.info("%s: finishing the batch in hand, then checkpoint, commit and exit", name)
            self.stopping.set()
            watchdog = threading.Timer(self.settings.daemon.shutdown_timeout, self._overdue)
            watchdog.daemon = True
            watchdog.start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _overdue(self) -> None:
        log.error(
            "shutdown took longer than daemon.shutdown_timeout=%ss; exiting without the final "
            "commit (records since the last checkpoint will be re-processed, without duplicates)",
            self.settings.daemon.shutdown_timeout,
        )
        os._exit(1)

    def _connect(self) -> Any:
        """A consumer, retrying with backoff while it cannot even be created (probing the
        broker version needs the broker); None if told to stop meanwhile."""
        attempt = 0
        while not self.stopping.is_set():
            attempt += 1
            try:
                return make_consumer(self.kafka, max_poll_records=self.settings.batch_size)
            except KafkaConfigurationError as exc:
                raise ConfigError(f"invalid config section 'kafka': {exc}") from None
            except KafkaError as exc:
                delay = self._backoff(attempt)
                log.warning(
                    "Kafka at %s unreachable (attempt %d: %s); retrying in %.1fs",
                    self._servers,
                    attempt,
                    _describe(exc),
                    delay,
                )
                self.stopping.wait(delay)
        return None

    def check_ready(self) -> None:
        """Readiness for /readyz: raises while consumption is paused for a database outage,
        while Kafka has not been reached, or while commits fail."""
        if self.db_down_since is not None:
            raise RuntimeError(
                f"consumption paused: database unreachable for "
                f"{time.monotonic() - self.db_down_since:.0f}s"
            )
        down = self.database.down_for  # noticed by another thread (alerts, jobs) while idle
        if down is not None:
            raise RuntimeError(f"database unreachable for {down:.0f}s")
        if not self.reached:
            raise RuntimeError(f"Kafka at {self._servers} not reached yet")
        if self.commit_failures:
            raise RuntimeError(f"Kafka commits failing ({self.commit_failures} in a row)")

    @property
    def _servers(self) -> str:
        return ", ".join(self.kafka.bootstrap_servers)

    def _watch_connection(self, now: float) -> None:
        """Logs, at growing intervals, while the cluster has never been reached; kafka-python
        itself reconnects with exponential backoff meanwhile."""
        if self.reached:
            return
        if has_metadata(self.consumer):
            self.reached = True
            if self.unreachable_since is not None:
                log.info("Kafka at %s reachable", self._servers)
            return
        if self.unreachable_since is None:
            self.unreachable_since = now
            self.next_unreachable_log = now + 1.0
        elif now >= self.next_unreachable_log:
            waited = now - self.unreachable_since
            log.warning(
                "Kafka at %s unreachable for %.0fs; still retrying with backoff",
                self._servers,
                waited,
            )
            self.next_unreachable_log = now + min(
                max(waited, 1.0), self.settings.daemon.retry_max_delay
            )

    def _backoff(self, attempt: int) -> float:
        return min(2.0 ** (attempt - 1), self.settings.daemon.retry_max_delay)

    def _publish_readiness(self) -> None:
        reachable = self.db_down_since is None and self.database.down_for is None
        metrics.DATABASE_REACHABLE.set(value=float(reachable))
        try:
            self.check_ready()
        except RuntimeError:
            metrics.READY.set(value=0.0)
        else:
            metrics.READY.set(value=1.0)

    # -- database outages --------------------------------------------------------------------

    def _pause_for_database(self, exc: BaseException) -> None:
        """Stops consuming until the database answers; the state in memory is dropped then."""
        with self.lock:
            self._mark_database_down()
        log.warning(
            "consumption paused: %s; probing it with backoff (at most every %.0fs), then "
            "resuming from the checkpoints",
            exc,
            self.settings.daemon.retry_max_delay,
        )
        self._publish_readiness()

    def _mark_database_down(self) -> None:
        """Pauses every owned partition; call with the lock held (also from callbacks)."""
        if self.db_down_since is None:
            self.db_down_since = time.monotonic()
            self.db_probes = 0
            self.next_db_probe = self.db_down_since + self._backoff(1)
        if self.owned:
            self.consumer.pause(*self.owned)

    def _try_resume(self, now: float) -> None:
        """Probes the database; if it answers, rewinds every owned partition to its checkpoint
        (as a restart would, without leaving the group) and resumes consuming."""
        try:
            self.database.probe()
            with self.lock:
                self._rewind()
        except DatabaseUnavailable:
            self.db_probes += 1
            self.next_db_probe = now + self._backoff(self.db_probes + 1)
            return
        assert self.db_down_since is not None
        down = time.monotonic() - self.db_down_since
        self.db_down_since = None
        if self.owned:
            self.consumer.resume(*self.owned)
        log.warning(
            "database reachable again after %.0fs: consumption resumed from the checkpoints "
            "of %d partitions",
            down,
            len(self.owned),
        )
        self._publish_readiness()

    def _rewind(self) -> None:
        """A fresh pipeline with each owned partition's checkpointed state, and the consumer
        at the checkpointed offsets (else where this process began reading the partition)."""
        stats = self.pipeline.stats
        self.pipeline = self._new_pipeline()
        self.pipeline.stats = stats
        for tp in sorted(self.owned):
            position = self.pipeline.restore_partition(tp.topic, tp.partition)
            start = position if position is not None else self.replay_from.get(tp)
            if start is not None:
                self.consumer.seek(tp, start)
                self.next_offsets[tp] = start
            if position is not None:
                self.uncommitted[tp] = position
            self.dirty.discard(tp)

    # -- the work ----------------------------------------------------------------------------

    def _process(self, polled: dict[TopicPartition, list[Any]]) -> None:
        with self.lock:
            # A partition revoked during this poll is no longer ours: its new owner reads it.
            mine = {tp: messages for tp, messages in polled.items() if tp in self.owned}
            mine, again = not_yet_processed(mine, self.next_offsets)
            if again:
                log.warning(
                    "the consumer returned %d records already processed (before the "
                    "partitions' positions in memory); they were skipped",
                    again,
                )
            records = to_records(mine)
            if not records:
                return
            for tp, messages in mine.items():
                self.replay_from.setdefault(tp, messages[0].offset)
            self.pipeline.process(records, wall_now=time.time())
            for tp, messages in mine.items():
                self.next_offsets[tp] = messages[-1].offset + 1
                self.dirty.add(tp)

    def _skip_unfetchable(self, exc: RecordTooLargeError) -> None:
        """A message larger than max_partition_fetch_bytes (brokers before 0.10.1 send only
        its first part): stored as a dead letter at its offset, and the partition goes on."""
        where: dict[TopicPartition, int] = exc.args[1] if len(exc.args) > 1 else {}
        if not where:
            raise exc
        with self.lock:
            letters = []
            for tp, offset in sorted(where.items()):
                if tp not in self.owned:
                    continue
                reason = (
                    f"message larger than kafka.max_partition_fetch_bytes "
                    f"({self.kafka.max_partition_fetch_bytes:,} bytes): not fetched"
                )
                position = Position(tp.topic, tp.partition, offset)
                letters.append(DeadLetter(position, reason, b"", time.time()))
            if not letters:
                return
            self.pipeline.store_dead_letters(letters)
            for letter in letters:
                tp = TopicPartition(letter.position.source, letter.position.partition)
                self.replay_from.setdefault(tp, letter.position.offset)
                self.consumer.seek(tp, letter.position.offset + 1)
                self.next_offsets[tp] = letter.position.offset + 1
                self.dirty.add(tp)
                log.warning(
                    "%s[%d]@%d: %s; stored as a dead letter, the partition goes on",
                    tp.topic,
                    tp.partition,
                    letter.position.offset,
                    letter.reason,
                )

    def _poll_size(self) -> int:
        """`batch_size` records per owned partition: each partition has its own detector state,
        so a poll is split into per-partition batches, and these stay near `batch_size` however
        many partitions this member owns (per-batch costs amortized as in a replay). Under no
        backlog a poll returns what has arrived, whatever this cap."""
        return self.settings.batch_size * max(1, len(self.owned))

    def _checkpoint(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Makes the progress on `partitions` durable; call with the lock held."""
        offsets = {tp: self.next_offsets[tp] for tp in partitions & self.dirty}
        if not offsets:
            return {}
        if self.producer is not None:
            self.producer.flush(timeout=COMMIT_TIMEOUT_MS / 1000)
        self.pipeline.checkpoint({(tp.topic, tp.partition): o for tp, o in offsets.items()})
        self.dirty -= offsets.keys()
        return offsets

    def _save(self) -> None:
        """Checkpoints every owned partition that advanced; their offsets await the commit."""
        with self.lock:
            self.uncommitted.update(self._checkpoint(set(self.owned)))

    def _commit(self, probe: bool = True) -> bool:
        """Commits the checkpointed offsets to Kafka; False if that failed.

        With `probe`, the offsets of owned partitions are committed again even when nothing
        changed: the commit doubles as the check that reveals a broker outage while idle."""
        with self.lock:
            pending = {tp: o for tp, o in self.uncommitted.items() if tp in self.owned}
            if not pending and probe:
                pending = {tp: o for tp, o in self.next_offsets.items() if tp in self.owned}
        if not pending:
            return True
        try:
            self.consumer.commit(
                {tp: OffsetAndMetadata(o, "", -1) for tp, o in pending.items()},
                timeout_ms=COMMIT_TIMEOUT_MS,
            )
        except KafkaError as exc:
            log.warning(
                "committing offsets to Kafka at %s failed (%s); the database holds them, "
                "will retry",
                self._servers,
                _describe(exc),
            )
            return False
        if self.commit_failures:
            log.info("Kafka at %s reachable again: offsets committed", self._servers)
        with self.lock:
            for tp, offset in pending.items():
                if self.uncommitted.get(tp) == offset:
                    del self.uncommitted[tp]
        return True

    def _forward_dead_letters(self, letters: list[DeadLetter]) -> None:
        if self.producer is None or not self.kafka.dead_letter_topic:
            return
        for letter in letters:
            key = f"{letter.position.source}:{letter.position.partition}".encode()
            try:
                self.producer.send(
                    self.kafka.dead_letter_topic, value=dead_letter_envelope(letter), key=key
                )
            except KafkaError as exc:
                log.warning(
                    "could not produce a dead letter to %s: %s (it is stored in the database)",
                    self.kafka.dead_letter_topic,
                    exc,
                )

    # -- rebalance callbacks (kafka-python's IO thread) ---------------------------------------

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        with self.lock:
            if self.db_down_since is None:
                try:
                    self._restore_assigned(partitions)
                    return
                except DatabaseUnavailable as exc:
                    log.warning("restoring assigned partitions failed: %s", exc)
            # The database is down: the partitions wait, paused, for the rewind at its return.
            self.owned.update(partitions)
            self._mark_database_down()
            log.info(
                "assigned %d partitions while the database is unreachable: paused",
                len(partitions),
            )

    def _restore_assigned(self, partitions: set[TopicPartition]) -> None:
        """Each partition's checkpointed state, and the consumer at its checkpointed offset."""
        resumed = []
        for tp in sorted(partitions):
            position = self.pipeline.restore_partition(tp.topic, tp.partition)
            self.owned.add(tp)
            if position is not None:
                self.consumer.seek(tp, position)
                self.next_offsets[tp] = position
                self.uncommitted[tp] = position  # bring Kafka's committed offset up to date
                resumed.append(f"{tp.topic}[{tp.partition}]@{position}")
            else:
                resumed.append(f"{tp.topic}[{tp.partition}]@kafka")
        log.info("assigned %d partitions: %s", len(partitions), ", ".join(resumed) or "none")
        self._warn_if_not_copartitioned()

    def on_revoked(self, partitions: set[TopicPartition], save: bool) -> None:
        with self.lock:
            # During an outage the state in memory is not trusted: the new owner resumes from
            # the last checkpoint, as after a crash.
            if save and self.db_down_since is None:
                try:
                    self._checkpoint(partitions & self.owned)
                except DatabaseUnavailable as exc:
                    log.warning("checkpoint of revoked partitions failed: %s", exc)
                    self._mark_database_down()
            for tp in partitions:
                self.pipeline.drop_partition(tp.topic, tp.partition)
                self.owned.discard(tp)
                self.next_offsets.pop(tp, None)
                self.dirty.discard(tp)
                self.uncommitted.pop(tp, None)
                self.replay_from.pop(tp, None)
        if partitions:
            what = "revoked" if save else "lost (state dropped, the new owner resumes)"
            log.info("%s %d partitions", what, len(partitions))

    def _warn_if_not_copartitioned(self) -> None:
        by_topic: dict[str, set[int]] = {}
        for tp in self.owned:
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        if len({frozenset(p) for p in by_topic.values()}) > 1:
            log.warning(
                "topics %s are not co-partitioned (different partition counts?): predictions "
                "and labels of one partition number may reach different processes; see "
                "docs/kafka.md",
                ", ".join(sorted(by_topic)),
            )

    def _raise_callback_error(self) -> None:
        if self.callback_error is not None:
            error, self.callback_error = self.callback_error, None
            raise error

    def _log_summary(self) -> None:
        stats = self.pipeline.stats
        log.info(
            "processed %d records (%d predictions, %d labels, %d dead letters), "
            "%d findings, %d incidents opened; %d partitions owned",
            stats.records,
            stats.predictions,
            stats.labels,
            stats.dead_letters,
            stats.findings,
            self.pipeline.incidents_opened,
            len(self.owned),
        )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _Rebalance(ConsumerRebalanceListener):
    """Forwards kafka-python's callbacks; an error is re-raised on the main thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._guard(lambda: self.daemon.on_assigned(set(assigned)))

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._guard(lambda: self.daemon.on_revoked(set(revoked), save=True))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Someone else may own these already: saving our older state could roll theirs back.
        self._guard(lambda: self.daemon.on_revoked(set(lost), save=False))

    def _guard(self, work: Any) -> None:
        try:
            work()
        except BaseException as exc:
            self.daemon.callback_error = exc
            raise
