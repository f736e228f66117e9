"""The exception hierarchy: one root, so callers can catch everything the dispatcher raises."""

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def cause_of_type(exc: BaseException, kind: type[E]) -> E | None:
    """`exc` or the first exception in its chain of causes that is a `kind`: libraries wrap
    the error that says what really happened."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__
    return None


class DispatcherError(Exception):
    """Root of every error the dispatcher raises on purpose."""


class ConfigError(DispatcherError):
    """The configuration is invalid; `problems` lists every finding, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreError(DispatcherError):
    """The database could not be opened, migrated or written."""
