"""webhook-dispatcher: deliver shop events from a SQLite queue to configured webhooks."""

__version__ = "0.1.0"
