"""Prepare the next batches in a background thread while the current step runs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

_END = object()


def prefetch(items: Iterator[In], transform: Callable[[In], Out],
             size: int = 2) -> Iterator[Out]:
    """``transform(item)`` for each of ``items``, in order, computed up to ``size`` items ahead
    in a background thread (reading, stacking and placing the next batch on the devices
    overlap the running step).

    An exception raised by ``items`` or ``transform`` is raised here, at the item where it
    happened. Closing this generator (or leaving its loop) stops the thread and closes
    ``items``.
    """
    ready: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((transform(item), None)):
                    return
            put((_END, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put((None, error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="anomjax-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value, error = ready.get()
            if error is not None:
                raise error
            if value is _END:
                return
            yield value
    finally:
        stop.set()
        thread.join()
