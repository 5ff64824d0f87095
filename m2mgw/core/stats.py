"""Plain counters and histograms the gateway keeps for its metrics (D-211).

Recording an event costs a dict increment or a bisect: no lock, no label lookup and
no ``prometheus_client`` in the core. :mod:`m2mgw.metrics` reads these objects when
Prometheus scrapes, and turns the Command_IDs and result codes into label values.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Sequence

#: Bucket bounds in seconds of the latency histograms: 0.5 ms to 10 s.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class Histogram:
    """Observations counted in fixed buckets (a value falls in the first bound >= it)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        #: One count per bound, and a last one for values above every bound.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` per bucket, ``inf`` last: the form
        of a Prometheus histogram."""
        total, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets


class EngineStats:
    """What the engine and its bearers handled since start-up, by Command_ID."""

    __slots__ = ("answer_latency", "logins", "received", "sent")

    def __init__(self) -> None:
        #: Messages received and parsed, by Command_ID.
        self.received: Counter[int] = Counter()
        #: Messages handed to a bearer (answers, requests, repeats), by Command_ID.
        self.sent: Counter[int] = Counter()
        #: LOGIN_ACKs sent, by result (spec 5.2).
        self.logins: Counter[int] = Counter()
        #: Request received to answer written, by the request's Command_ID.
        self.answer_latency: defaultdict[int, Histogram] = defaultdict(Histogram)

    def count_sent(self, frame: bytes) -> None:
        """One frame handed to a bearer; its Command_ID is header bytes 2-3 (spec 2.1)."""
        self.sent[frame[2] << 8 | frame[3]] += 1
