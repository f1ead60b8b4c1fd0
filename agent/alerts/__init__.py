"""Alerting: routing and silences, the durable outbox, channels, and the dispatcher.

Incident changes write outbox rows in their own transaction (`outbox`); the `dispatcher`
delivers them through `channels` with retries, independent of the hot path.
"""
