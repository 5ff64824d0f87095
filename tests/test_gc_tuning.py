"""Once the gateway serves, start-up's heap is frozen and the young generation is
collected less often (D-359, D-396); the process's collector is restored afterwards."""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.defer import Deferred

from m2mgw.service import GC_YOUNG_THRESHOLD, freeze_heap_when_ready


class Reactor:
    """What ``freeze_heap_when_ready`` asks of the reactor: a call once it runs."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callWhenRunning(self, call: Any) -> None:
        self.calls.append(call)


class Gateway:
    def __init__(self) -> None:
        self.reactor = Reactor()
        self.ready: Deferred[None] = Deferred()


def test_when_ready_the_heap_is_frozen_and_young_collections_come_less_often() -> None:
    before = gc.get_threshold()
    gateway = Gateway()
    try:
        freeze_heap_when_ready(gateway)  # type: ignore[arg-type]
        for call in gateway.reactor.calls:
            call()
        assert gc.get_threshold() == before, "nothing changes before the gateway serves"
        gateway.ready.callback(None)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
