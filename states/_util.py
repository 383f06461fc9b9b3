"""Small helpers shared by the state modules."""

from __future__ import annotations


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first leaf exception of a TaskGroup's group, so the run fails with a readable message."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
