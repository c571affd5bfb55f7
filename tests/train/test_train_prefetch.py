"""The background prefetch of batches: order, errors at the right item, clean shutdown."""

from __future__ import annotations

import threading

import pytest

from anomjax.train.prefetch import prefetch


def _threads() -> int:
    return sum(t.name == "anomjax-prefetch" for t in threading.enumerate())


def test_prefetch_keeps_the_order_and_applies_the_transform():
    assert list(prefetch(iter(range(20)), lambda i: i * i, size=3)) == [i * i for i in range(20)]
    assert _threads() == 0


def test_prefetch_raises_the_error_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("bad image: /data/3.png")

    got = []
    with pytest.raises(ValueError, match="3.png"):
        for x in prefetch(items(), lambda i: i):
            got.append(x)
    assert got == [1, 2]
    assert _threads() == 0


def test_leaving_the_loop_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def items():
        try:
            yield from range(1000)
        finally:
            closed.set()

    for x in prefetch(items(), lambda i: i, size=2):
        if x == 3:
            break
    assert closed.is_set()
    assert _threads() == 0
