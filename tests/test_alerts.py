"""Alerting against local receivers that check payloads as Slack, PagerDuty and a signed
webhook document them, and answer like them (success, 400 with a body, 429 with
Retry-After, 5xx, timeouts)."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest

from agent.alerts.dispatcher import Dispatcher
from agent.alerts.routing import channels_for
from agent.config import AlertSettings, Settings, load_settings
from agent.incidents.lifecycle import set_status
from agent.incidents.manager import IncidentManager
from storage.db import Database
from storage.notifications import OutboxStore
from storage.unit_of_work import UnitOfWork
from tests.alerts_helpers import Clock, alert_settings, finding, outbox, record
from tests.receivers import Receiver, Reply

ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12"
HMAC_SECRET = "hm4c-s3cret-value"


@pytest.fixture
def slack() -> Iterator[Receiver]:
    r = Receiver("slack")
    yield r
    r.close()


@pytest.fixture
def pd() -> Iterator[Receiver]:
    r = Receiver("pagerduty", routing_key=ROUTING_KEY)
    yield r
    r.close()


@pytest.fixture
def hook() -> Iterator[Receiver]:
    r = Receiver("webhook", secret=HMAC_SECRET)
    yield r
    r.close()


def drain(dispatcher: Dispatcher, clock: Clock, passes: int = 3, step: float = 0.0) -> None:
    for _ in range(passes):
        dispatcher.run_once()
        clock.advance(step)


def pd_events(pd: Receiver) -> list[tuple[str, str]]:
    return [(r.body["event_action"], r.body["dedup_key"]) for r in pd.accepted]


def test_open_then_resolve_gives_one_trigger_and_one_resolve(
    database: Database, slack: Receiver, pd: Receiver, hook: Receiver
) -> None:
    alerts = alert_settings({"slack": slack, "pagerduty": pd, "webhook": hook})
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    (change,) = record(database, alerts, [finding(severity="critical")], now=clock.now)
    more = [finding(ts=1767225700.0 + i) for i in range(3)]  # updates: no new notification
    record(database, alerts, more, now=clock.now)
    drain(dispatcher, clock)
    set_status(database, alerts, change.incident.id, "resolved", now=clock.now)
    clock.advance(1)
    drain(dispatcher, clock)

    events = pd_events(pd)
    assert [a for a, _ in events] == ["trigger", "resolve"]
    assert events[0][1] == events[1][1]
    assert str(change.incident.id) in events[0][1]
    trigger = pd.accepted[0].body["payload"]
    assert trigger["severity"] == "critical"
    assert trigger["source"] == "bulwark:fraud"
    assert trigger["class"] == "feature_drift" and trigger["component"] == "amount"
    assert trigger["custom_details"]["id"] == change.incident.id
    assert trigger["custom_details"]["details"]["statistic"] == "cusum"
    assert pd.accepted[0].body["links"][0]["href"].endswith(f"/incidents/{change.incident.id}")
    assert pd.invalid == [] and slack.invalid == [] and hook.invalid == []
    # Slack: one message on open, one on resolve, with the key facts and the link.
    assert len(slack.accepted) == 2
    opened = json_text(slack.accepted[0].body)
    for needle in ("critical", "fraud", "feature_drift", "amount", "cusum = 7.25", "threshold 5"):
        assert needle in opened
    assert f"https://bulwark.example/incidents/{change.incident.id}" in opened
    assert "Resolved" in json_text(slack.accepted[1].body)
    # The webhook is signed (the receiver checks the HMAC) and says what happened.
    assert [n["action"] for r in hook.accepted for n in r.body["notifications"]] == [
        "trigger",
        "resolve",
    ]
    assert {n.state for n in outbox(database)} == {"delivered"}
    # Nothing is sent twice, however often the dispatcher runs.
    drain(dispatcher, clock, passes=3, step=60)
    assert len(pd.accepted) == 2 and len(slack.accepted) == 2


def json_text(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False)


def test_receiver_down_gets_everything_in_order_once_back(database: Database, pd: Receiver) -> None:
    alerts = alert_settings({"pagerduty": pd}, backoff_initial=1, backoff_max=4)
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    pd.down = True
    opened = []
    for model in ("fraud", "churn", "price"):
        (change,) = record(database, alerts, [finding(model=model)], now=clock.now)
        opened.append(change.incident)
        drain(dispatcher, clock, passes=2, step=1)
    set_status(database, alerts, opened[0].id, "resolved", now=clock.now)
    drain(dispatcher, clock, passes=10, step=1)
    assert pd.accepted == [] and pd.requests > 3
    rows = outbox(database)
    assert all(r.state == "pending" for r in rows)
    assert "HTTP 503" in (rows[0].last_error or "")

    pd.down = False
    drain(dispatcher, clock, passes=12, step=2)
    expected = [("trigger", f"bulwark-{i.id}-") for i in opened] + [
        ("resolve", f"bulwark-{opened[0].id}-")
    ]
    got = pd_events(pd)
    assert [(a, k[: len(p)]) for (a, k), (_, p) in zip(got, expected, strict=True)] == expected
    assert {r.state for r in outbox(database)} == {"delivered"}


def test_429_waits_for_retry_after(database: Database, slack: Receiver) -> None:
    alerts = alert_settings({"slack": slack})
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    slack.scripted.append(Reply(429, "rate_limited", {"Retry-After": "30"}))
    record(database, alerts, [finding()], now=clock.now)
    dispatcher.run_once()
    (row,) = outbox(database)
    assert row.state == "pending" and row.next_attempt_at == pytest.approx(clock.now + 30)
    clock.advance(29)
    dispatcher.run_once()
    assert slack.requests == 1
    clock.advance(1)
    dispatcher.run_once()
    assert slack.requests == 2 and len(slack.accepted) == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, "invalid_payload"),
        (403, "action_prohibited"),
        (404, "no_service"),
        (410, "channel_is_archived"),
    ],
)
def test_rejections_are_not_retried_and_say_why(
    sqlite_url: str, slack: Receiver, status: int, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(sqlite_url)
    alerts = alert_settings({"slack": slack})
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    slack.scripted.append(Reply(status, body))
    record(database, alerts, [finding()], now=clock.now)
    with caplog.at_level(logging.WARNING):
        drain(dispatcher, clock, passes=4, step=600)
    (row,) = outbox(database)
    assert row.state == "failed" and row.last_error == f"HTTP {status}: {body}"
    assert slack.requests == 1
    assert f"HTTP {status}" in caplog.text and "not retried" in caplog.text
    assert "XXXXSECRETXXXX" not in caplog.text + row.last_error


def test_pagerduty_400_body_is_recorded(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    pd = Receiver("pagerduty", routing_key="another-key")  # ours is refused
    try:
        alerts = alert_settings({"pagerduty": pd})
        alerts.channels["pagerduty"].routing_key = type(alerts.channels["pagerduty"].routing_key)(
            ROUTING_KEY
        )
        clock = Clock()
        record(database, alerts, [finding()], now=clock.now)
        Dispatcher(database, alerts, clock=clock).run_once()
    finally:
        pd.close()
    (row,) = outbox(database)
    assert row.state == "failed"
    assert "invalid event" in (row.last_error or "") and "routing_key is invalid" in row.last_error
    assert ROUTING_KEY not in row.last_error


def test_gives_up_after_configured_time_visibly(
    sqlite_url: str, pd: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(sqlite_url)
    alerts = alert_settings({"pagerduty": pd}, give_up_after=60, backoff_max=5)
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    pd.down = True
    record(database, alerts, [finding()], now=clock.now)
    with caplog.at_level(logging.ERROR):
        drain(dispatcher, clock, passes=40, step=2)
    (row,) = outbox(database)
    assert row.state == "failed"
    assert row.last_error is not None and row.last_error.startswith("gave up after")
    assert "HTTP 503" in row.last_error
    assert "failed for good" in caplog.text
    requests = pd.requests
    drain(dispatcher, clock, passes=3, step=60)
    assert pd.requests == requests  # nothing more is tried


def test_timeouts_and_server_errors_are_retried(sqlite_url: str, pd: Receiver) -> None:
    database = Database(sqlite_url)
    alerts = alert_settings({"pagerduty": pd}, timeout=0.3)
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    pd.scripted += [Reply(202, {"status": "success"}, delay=1.0), Reply(500, "oops")]
    record(database, alerts, [finding()], now=clock.now)
    drain(dispatcher, clock, passes=4, step=10)
    (row,) = outbox(database)
    assert row.state == "delivered" and row.attempts == 3
    assert len(pd.accepted) == 1


def test_silence_holds_back_matching_notifications_only(
    database: Database, slack: Receiver
) -> None:
    alerts = alert_settings({"slack": slack})
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    with database.session() as session:
        OutboxStore(session).add_silence(
            model="fraud",
            kind="feature_drift",
            reason="known upstream change",
            starts_at=clock.now - 1,
            ends_at=clock.now + 7200,
        )
    record(
        database,
        alerts,
        [
            finding("fraud", "feature_drift", "amount"),
            finding("fraud", "feature_drift", "age"),
            finding("fraud", "prediction_drift", "prediction"),
            finding("churn", "feature_drift", "amount"),
        ],
        now=clock.now,
    )
    drain(dispatcher, clock)
    sent = json_text({"m": [r.body for r in slack.accepted]})
    announced = {int(i) for i in re.findall(r"#(\d+) ", sent)}
    delivered = {r.incident_id for r in outbox(database) if r.state == "delivered"}
    assert announced == delivered and len(announced) == 2
    states = {(r.content["model"], r.content["subject"]): r.state for r in outbox(database)}
    assert states == {
        ("fraud", "amount"): "silenced",
        ("fraud", "age"): "silenced",
        ("fraud", "prediction"): "delivered",
        ("churn", "amount"): "delivered",
    }


def test_burst_of_100_findings_on_one_model_is_a_bounded_number_of_messages(
    database: Database, slack: Receiver, pd: Receiver, hook: Receiver
) -> None:
    alerts = alert_settings({"slack": slack, "pagerduty": pd, "webhook": hook}, group_wait=30)
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    # 100 findings within a few seconds: 60 on one feature (one incident, escalating once),
    # 40 on 40 other features (40 incidents).
    burst = [
        finding(subject="amount", severity="critical" if i == 30 else "warning", ts=1.7e9 + i)
        for i in range(60)
    ] + [finding(subject=f"f{i}", ts=1.7e9 + i) for i in range(40)]
    for start in range(0, 100, 10):  # ten pipeline batches, one second apart
        record(database, alerts, burst[start : start + 10], now=clock.now)
        clock.advance(1)
        dispatcher.run_once()
        assert slack.requests == 0  # still inside the group wait
    clock.advance(30)
    drain(dispatcher, clock, passes=3, step=1)
    assert len(slack.accepted) == 1 and len(hook.accepted) == 1
    assert slack.invalid == [] and pd.invalid == []
    body = json_text(slack.accepted[0].body)
    assert "41 incident updates on fraud" in body and "and 31 more" in body
    assert len(hook.accepted[0].body["notifications"]) == 42  # 41 opened + 1 escalated
    # PagerDuty: one trigger per incident (its dedup_key), never two for the same one.
    keys = [k for a, k in pd_events(pd)]
    assert len(keys) == 41 == len(set(keys))


def test_repeat_interval_for_incidents_that_stay_open(database: Database, slack: Receiver) -> None:
    alerts = alert_settings({"slack": slack}, repeat_interval=3600)
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    (a,) = record(database, alerts, [finding(subject="amount")], now=clock.now)
    (b,) = record(database, alerts, [finding(subject="age")], now=clock.now)
    drain(dispatcher, clock)
    assert len(slack.accepted) == 1
    clock.advance(1800)
    drain(dispatcher, clock)
    assert len(slack.accepted) == 1
    set_status(database, alerts, b.incident.id, "acknowledged", now=clock.now)  # no repeats
    drain(dispatcher, clock)
    assert "Acknowledged" in json_text(slack.accepted[-1].body)
    count = len(slack.accepted)
    clock.advance(1900)
    drain(dispatcher, clock, passes=2, step=31)
    repeats = [r for r in outbox(database) if r.reason == "repeat"]
    assert [r.incident_id for r in repeats] == [a.incident.id]
    assert len(slack.accepted) == count + 1
    assert "Still open" in json_text(slack.accepted[-1].body)


def test_routing_by_model_kind_and_severity(
    database: Database, slack: Receiver, pd: Receiver
) -> None:
    alerts = alert_settings(
        {"slack": slack, "pagerduty": pd},
        routes=[
            {"channels": ["slack"]},
            {"models": ["fraud"], "severities": ["critical"], "channels": ["pagerduty"]},
            {"kinds": ["suspicious_client"], "channels": ["pagerduty"]},
        ],
    )
    assert channels_for(alerts, "fraud", "feature_drift", "critical") == ["pagerduty", "slack"]
    assert channels_for(alerts, "fraud", "feature_drift", "warning") == ["slack"]
    assert channels_for(alerts, "churn", "suspicious_client", "info") == ["pagerduty", "slack"]
    record(
        database,
        alerts,
        [finding("fraud", severity="critical"), finding("churn", severity="critical")],
    )
    routed = sorted((r.content["model"], r.channel) for r in outbox(database))
    assert routed == [("churn", "slack"), ("fraud", "pagerduty"), ("fraud", "slack")]


def test_resolve_only_goes_where_the_incident_was_announced(
    database: Database, pd: Receiver
) -> None:
    alerts = alert_settings({"pagerduty": pd})
    clock = Clock()
    with database.session() as session:
        (change,) = IncidentManager().apply(UnitOfWork(session), [finding()])  # a backfill
    set_status(database, alerts, change.incident.id, "resolved", now=clock.now)
    assert outbox(database) == []
    reopened = set_status(database, alerts, change.incident.id, "open", now=clock.now)
    assert reopened is not None
    assert [(r.action, r.reason) for r in outbox(database)] == [("trigger", "reopened")]


def test_secrets_stay_out_of_logs_errors_and_the_database(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(sqlite_url)
    slack, pd, hook = (
        Receiver("slack"),
        Receiver("pagerduty", ROUTING_KEY),
        Receiver("webhook", secret=HMAC_SECRET),
    )
    try:
        alerts = alert_settings({"slack": slack, "pagerduty": pd, "webhook": hook})
        clock = Clock()
        dispatcher = Dispatcher(database, alerts, clock=clock)
        for r in (slack, pd, hook):
            r.scripted += [Reply(500, f"error at {r.url}"), Reply(400, f"bad key {ROUTING_KEY}")]
        record(database, alerts, [finding()], now=clock.now)
        with caplog.at_level(logging.DEBUG):
            drain(dispatcher, clock, passes=4, step=5)
        # Unreachable: the error names the exception, not the URL.
        hook.close()
        record(database, alerts, [finding(subject="other")], now=clock.now)
        with caplog.at_level(logging.DEBUG):
            drain(dispatcher, clock, passes=2, step=5)
    finally:
        slack.close()
        pd.close()
    rows = outbox(database)
    assert {r.state for r in rows} >= {"failed"}
    stored = repr([r.to_dict() for r in rows]) + repr([r.content for r in rows])
    text = caplog.text + stored + repr(alerts) + str(alerts)
    for secret in (ROUTING_KEY, HMAC_SECRET, "XXXXSECRETXXXX", "/hook", "/v2/enqueue"):
        assert secret not in text, secret
    assert "HTTP 400: bad key ***" in stored and "ConnectError" in stored


def test_settings_validation_names_the_key() -> None:
    from agent.config import ConfigError

    with pytest.raises(ValueError, match="unknown channel 'pager'"):
        AlertSettings.model_validate(
            {
                "channels": {"s": {"type": "slack", "url": "http://x/y"}},
                "routes": [{"channels": ["pager"]}],
            }
        )
    with pytest.raises(ValueError, match="needs routing_key"):
        AlertSettings.model_validate({"channels": {"p": {"type": "pagerduty"}}})
    env = {
        "BULWARK_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/SECRET",
        "BULWARK_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "BULWARK_PAGERDUTY_URL": "http://127.0.0.1:9/v2/enqueue",
        "BULWARK_WEBHOOK_URL": "https://example.org/hook",
    }
    settings = load_settings(environ=env)
    channels = settings.alerts.channels
    assert sorted(channels) == ["pagerduty", "slack", "webhook"]
    assert channels["pagerduty"].endpoint() == "http://127.0.0.1:9/v2/enqueue"
    assert load_settings(environ={"BULWARK_PAGERDUTY_URL": "http://x"}).alerts.channels == {}
    assert ROUTING_KEY not in repr(settings) and "SECRET" not in repr(settings)
    default = load_settings(environ={"BULWARK_PAGERDUTY_ROUTING_KEY": "k"}).alerts.channels
    assert default["pagerduty"].endpoint() == "https://events.pagerduty.com/v2/enqueue"
    with pytest.raises(ConfigError, match=r"'alerts\.group_wait'.*not a duration"):
        _settings_from({"group_wait": "soon"})
    assert _settings_from({"group_wait": "2m", "repeat_interval": "4h"}).alerts.group_wait == 120


def _settings_from(alerts: dict) -> Settings:
    """Settings from a TOML file with this [alerts] section, as a user would write it."""
    lines = [f'{k} = "{v}"' for k, v in alerts.items()]
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "bulwark.toml"
        path.write_text("[alerts]\n" + "\n".join(lines) + "\n")
        return load_settings(path, environ={})


def test_pagerduty_pace_stays_under_its_rate_limit(sqlite_url: str, pd: Receiver) -> None:
    database = Database(sqlite_url)
    alerts = alert_settings({"pagerduty": pd}, pagerduty_per_minute=5)
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    record(database, alerts, [finding(subject=f"f{i}") for i in range(8)], now=clock.now)
    drain(dispatcher, clock, passes=3, step=10)
    assert len(pd.accepted) == 5
    clock.advance(31)
    drain(dispatcher, clock)
    keys = [k for _, k in pd_events(pd)]
    assert len(keys) == 8 == len(set(keys))
    ids = [int(k.split("-")[1]) for k in keys]
    assert ids == sorted(ids)  # in order


def test_retry_after_and_durations_parse_as_documented() -> None:
    import httpx

    from agent.alerts.channels.base import retry_after
    from agent.config import parse_duration

    assert retry_after(httpx.Headers({"Retry-After": "12"})) == 12
    date = httpx.Headers({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})
    assert retry_after(date, now=lambda: 1792567650.0) == pytest.approx(30)
    assert retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after(httpx.Headers()) is None
    assert [parse_duration(v) for v in ("500ms", "30s", "5m", "2h", "1d", 7, "1.5")] == [
        0.5, 30, 300, 7200, 86400, 7, 1.5
    ]  # fmt: skip
    for bad in ("2 weeks", "-1s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_backoff_is_capped_by_default_so_a_recovered_receiver_hears_within_a_minute(
    database: Database, slack: Receiver
) -> None:
    """A receiver down for half an hour: the retry delay stops growing at `backoff_max`
    (60 s by default), so it gets the message at most a minute after it is back."""
    alerts = alert_settings({"slack": slack})
    alerts = alerts.model_copy(update={"backoff_max": AlertSettings().backoff_max})
    assert alerts.backoff_max <= 60
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    slack.down = True
    record(database, alerts, [finding()], now=clock.now)
    delays = []
    start = clock.now
    while clock.now < start + 1800:
        dispatcher.run_once()
        (row,) = outbox(database)
        delays.append(row.next_attempt_at - clock.now)
        clock.advance(max(row.next_attempt_at - clock.now, 0.0))
    assert max(delays) == pytest.approx(alerts.backoff_max)
    assert delays[:4] == pytest.approx([1, 2, 4, 8])  # still doubling from backoff_initial
    slack.down = False
    recovered = clock.now
    while not slack.accepted:
        clock.advance(1)
        dispatcher.run_once()
    assert clock.now - recovered <= alerts.backoff_max


@pytest.mark.parametrize("form", ["seconds", "http-date"])
@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_on_503_as_on_429(
    database: Database, pd: Receiver, status: int, form: str
) -> None:
    from email.utils import formatdate

    alerts = alert_settings({"pagerduty": pd})  # backoff would say 1 s
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    when = "45" if form == "seconds" else formatdate(time.time() + 45, usegmt=True)
    pd.scripted.append(Reply(status, {"status": "throttled"}, {"Retry-After": when}))
    record(database, alerts, [finding()], now=clock.now)
    dispatcher.run_once()
    (row,) = outbox(database)
    assert row.state == "pending"
    assert row.next_attempt_at - clock.now == pytest.approx(45, abs=1.5)
    clock.advance(40)
    dispatcher.run_once()
    assert pd.requests == 1  # not before the receiver said
    clock.advance(6)
    dispatcher.run_once()
    assert pd.requests == 2 and len(pd.accepted) == 1 and pd.invalid == []
