"""A call run on a thread while the caller goes on, its result or error collected later."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Meanwhile(Generic[T]):
    """A call run on a daemon thread while the caller goes on; `result()` waits for it and raises what it raised.
    A process that exits on another error does not wait for it (a Kafka check can take seconds)."""

    def __init__(self, call: Callable[[], T], name: str = "k2jobs-meanwhile") -> None:
        self._call = call
        self._result: list[T] = []  # the call's result, once it returned
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result.append(self._call())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result[0]
