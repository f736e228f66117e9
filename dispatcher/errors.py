"""The exception hierarchy: one root, so callers can catch everything the dispatcher raises."""


class DispatcherError(Exception):
    """Root of every error the dispatcher raises on purpose."""


class ConfigError(DispatcherError):
    """The configuration is invalid; `problems` lists every finding, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreError(DispatcherError):
    """The database could not be opened, migrated or written."""
