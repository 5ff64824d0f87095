"""What the gateway refuses: one log line per refusal, rate-limited, and counted.

Every message, datagram or connection the gateway turns away is reported here with a
:class:`Reason`. Reporting is rate-limited so that a flood (a million LOGINs from an
unknown serial, a scanner sending garbage) writes a bounded number of lines: each
source (reason and serial, else peer) has a token bucket of ``burst`` lines per
``interval``, all sources together share one of ``20 * burst``, and what the buckets
hold back is summed up in one line per reason once per ``interval`` (D-152).

The counts are kept regardless of the rate limit, per reason and per (serial,
reason), for metrics and the console; memory stays bounded because the least
recently refused serials and sources are forgotten first (D-153).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

log = Logger()

#: Lines all sources together may write per interval, as a multiple of ``burst``.
TOTAL_FACTOR = 20


class Reason(StrEnum):
    """Why something was refused; stable names, for log searches and metrics."""

    UNKNOWN_SERIAL = "unknown-serial"
    NOT_PROVISIONED = "not-provisioned"
    AUTH_FAILED = "auth-failed"
    MISSING_DIGEST = "missing-digest"
    DISABLED = "disabled"
    CREDENTIALS_EXPIRED = "credentials-expired"
    BAD_VERSION = "bad-version"
    NOT_LOGGED_IN = "not-logged-in"
    WRONG_CONNECTION = "wrong-connection"
    WRONG_PATH = "wrong-path"
    MALFORMED = "malformed"
    FRAMING = "framing"
    CONNECTION_CAP = "connection-cap"
    UNMATCHED_ANSWER = "unmatched-answer"
    REJECTED = "rejected"
    #: A TRANSPARENT_DATA whose CRC16 does not match its data (answered result 4).
    CRC_MISMATCH = "crc-mismatch"
    #: A digest over the 28-byte header alone (spec 1.6 C4): no profile accepts it.
    HEADER_ONLY_DIGEST = "header-only-digest"
    #: A reported value outside its tag's range, not stored (D-240).
    OUT_OF_RANGE = "out-of-range"
    #: A platform request or answer the terminal's compatibility profile cannot take.
    PROFILE = "profile"
    #: A signed message or LOGIN accepted before, or too old to tell (D-293, D-299).
    REPLAYED = "replayed"
    #: A TCP connection closed for carrying no authenticated message in time (D-291).
    LOGIN_TIMEOUT = "login-timeout"


#: Refusals that point at an attack or a misconfigured secret: logged as warnings.
_WARN = frozenset(
    {Reason.AUTH_FAILED, Reason.MISSING_DIGEST, Reason.HEADER_ONLY_DIGEST, Reason.CONNECTION_CAP}
)

#: The optional terminal keys of a refusal line, in the order its text names them.
_TEXT_PARTS = (
    ("command", " {command}"),
    ("sequence_id", " seq {sequence_id}"),
    ("serial", " from {serial}"),
    ("peer", " at {peer}"),
    ("bearer", " over {bearer}"),
)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float

    def take(self, now: float, capacity: float, rate: float) -> bool:
        """Refill for the time since the last call, then spend one token if there is one."""
        self.tokens = min(capacity, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Refusals:
    """Rate-limited refusal lines and per-(serial, reason) counts (issue #8)."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        burst: int = 5,
        interval: float = 60.0,
        max_sources: int = 4096,
        max_serials: int = 10_000,
    ) -> None:
        self.clock = clock
        self.burst = burst
        self.interval = interval
        self.max_sources = max_sources
        self.max_serials = max_serials
        #: Refusals per reason since start-up, logged or not.
        self.totals: Counter[Reason] = Counter()
        self._by_serial: OrderedDict[str, Counter[Reason]] = OrderedDict()
        self._buckets: OrderedDict[tuple[Reason, str], _Bucket] = OrderedDict()
        now = clock.seconds()
        self._total_bucket = _Bucket(float(burst * TOTAL_FACTOR), now)
        #: Lines held back per reason since ``_window_start``, reported by ``flush``.
        self._suppressed: Counter[Reason] = Counter()
        self._window_start = now
        self._summary: IDelayedCall | None = None

    def report(
        self,
        reason: Reason,
        detail: str = "",
        *,
        serial: str | None = None,
        peer: str | None = None,
        bearer: str | None = None,
        command: str | None = None,
        sequence_id: int | None = None,
        hint: str | None = None,
        **fields: object,
    ) -> None:
        """Count one refusal and log it unless its source or the whole gateway is over
        its rate; ``hint`` ends the line (which compatibility profile would accept the
        message, issue #10); ``fields`` are extra event keys."""
        self.totals[reason] += 1
        if serial:
            self._count(serial, reason)
        now = self.clock.seconds()
        if not self._allowed(reason, serial or peer or "", now):
            if not self._suppressed:
                self._window_start = now
                self._summary = self.clock.callLater(self.interval, self.flush)
            self._suppressed[reason] += 1
            return
        keys = {
            "serial": serial,
            "peer": peer,
            "bearer": bearer,
            "command": command,
            "sequence_id": sequence_id,
        }
        present = {k: v for k, v in keys.items() if v is not None}
        text = "Refused" + "".join(part for k, part in _TEXT_PARTS if k in present)
        text += ": {reason} ({detail})" if detail else ": {reason}"
        if hint:
            present["hint"] = hint
            text += "; {hint}"
        log.emit(
            LogLevel.warn if reason in _WARN else LogLevel.info,
            text,
            event="refusal",
            reason=reason,
            detail=detail,
            **present,
            **fields,
        )

    def counts(self, serial: str) -> dict[Reason, int]:
        """The refusals counted for ``serial`` by reason (empty once forgotten)."""
        return dict(self._by_serial.get(serial, {}))

    def flush(self) -> None:
        """Write the summary of the lines held back, one line per reason, and start a
        new window."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        seconds = self.clock.seconds() - self._window_start
        for reason, count in sorted(self._suppressed.items()):
            log.info(
                "{suppressed} more {reason} refusals not logged in the last {seconds:.0f} s",
                event="refusals-suppressed",
                reason=reason,
                suppressed=count,
                seconds=seconds,
            )
        self._suppressed.clear()

    def _allowed(self, reason: Reason, source: str, now: float) -> bool:
        """Per-source bucket first, so one noisy source cannot use up the shared one."""
        key = (reason, source)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        rate = self.burst / self.interval
        if not bucket.take(now, self.burst, rate):
            return False
        total = self.burst * TOTAL_FACTOR
        return self._total_bucket.take(now, total, total / self.interval)

    def _count(self, serial: str, reason: Reason) -> None:
        counter = self._by_serial.get(serial)
        if counter is None:
            counter = self._by_serial[serial] = Counter()
            if len(self._by_serial) > self.max_serials:
                self._by_serial.popitem(last=False)
        else:
            self._by_serial.move_to_end(serial)
        counter[reason] += 1
