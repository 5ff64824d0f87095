"""The attacker of the flood test (issue #11 part 1), a process of its own on loopback.

``python -m tests.flood.flood '<json plan>'`` holds ``idle`` TCP connections that send
nothing and ``slow`` ones that send one byte every ``trickle`` seconds (bytes of a valid
header, so never a framing error and never a whole frame), spread over source
addresses of 127.0.0.0/8 so that they come from several hosts, and reconnects each one
the gateway closes, at most ``reconnect_rate`` a second; meanwhile it sends UDP
``datagrams`` round-robin from ``udp_ports`` source ports at ``udp_rate`` a second.
It stops by itself after ``seconds`` and prints one JSON line of counts. Its soft
open-file limit is raised to the hard limit first.
"""

from __future__ import annotations

import errno
import json
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass

TICK = 0.005


@dataclass
class Slot:
    """One of the flood's connections, reopened whenever the gateway closes it."""

    source: str
    slow: bool
    sock: socket.socket | None = None
    connected: bool = False
    sent: int = 0
    next_byte: float = 0.0


class Flood:
    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.target = ("127.0.0.1", plan["tcp_port"])
        self.selector = selectors.DefaultSelector()
        sources = plan["sources"]
        self.slots = [Slot(sources[i % len(sources)], slow=False) for i in range(plan["idle"])]
        self.slots += [Slot(sources[-1 - i % len(sources)], slow=True)
                       for i in range(plan["slow"])]
        self.header: bytes = bytes.fromhex(plan["header"])
        self.reconnect_budget = float(plan["reconnect_rate"])
        self.to_open: list[Slot] = list(self.slots)
        self.slow_slots = [slot for slot in self.slots if slot.slow]
        self.open = 0
        self.counts = {"connects": 0, "connected": 0, "closed_by_gateway": 0,
                       "connect_failed": 0, "bytes_trickled": 0, "udp_sent": 0,
                       "udp_send_failed": 0, "max_open": 0}
        self.udp = []
        for _ in range(plan["udp_ports"]):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            udp.setblocking(False)
            self.udp.append(udp)
        self.datagrams = [bytes.fromhex(d) for d in plan["datagrams"]]

    def run(self) -> dict:
        start = last = next_trickle = time.monotonic()
        end = start + self.plan["seconds"]
        udp_due = 0.0
        rate = self.reconnect_budget
        budget = float(len(self.slots))  # the first wave at once
        ready = False
        while (now := time.monotonic()) < end:
            elapsed, last = now - last, now
            while self.to_open and budget >= 1:
                self._open(self.to_open.pop())
                budget -= 1
            if not ready and not self.to_open:
                print("ready", flush=True)
                ready = True
            if ready:
                budget = min(budget + elapsed * rate, max(rate, 1.0))
            udp_due += elapsed * self.plan["udp_rate"]
            self._send_udp(int(udp_due))
            udp_due -= int(udp_due)
            for key, mask in self.selector.select(TICK):
                self._event(key.data, mask)
            if now >= next_trickle:
                self._trickle(now)
                next_trickle = now + 0.1
        self.counts["open_at_end"] = self.open
        self.counts["seconds"] = round(time.monotonic() - start, 1)
        return self.counts

    def _open(self, slot: Slot) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((slot.source, 0))
        self.counts["connects"] += 1
        code = sock.connect_ex(self.target)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.counts["connect_failed"] += 1
            self.to_open.insert(0, slot)
            return
        slot.sock, slot.connected, slot.sent = sock, False, 0
        self.selector.register(sock, selectors.EVENT_WRITE | selectors.EVENT_READ, slot)

    def _event(self, slot: Slot, mask: int) -> None:
        sock = slot.sock
        assert sock is not None
        if not slot.connected:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self.counts["connect_failed"] += 1
                self._closed(slot, by_gateway=False)
                return
            slot.connected = True
            self.open += 1
            self.counts["max_open"] = max(self.counts["max_open"], self.open)
            self.counts["connected"] += 1
            self.selector.modify(sock, selectors.EVENT_READ, slot)
            if slot.slow:
                slot.next_byte = 0.0  # the first byte at once
            return
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closed(slot, by_gateway=True)

    def _closed(self, slot: Slot, *, by_gateway: bool) -> None:
        assert slot.sock is not None
        self.selector.unregister(slot.sock)
        slot.sock.close()
        if by_gateway:
            self.counts["closed_by_gateway"] += 1
        if slot.connected:
            self.open -= 1
        slot.sock, slot.connected = None, False
        self.to_open.insert(0, slot)

    def _trickle(self, now: float) -> None:
        for slot in self.slow_slots:
            if slot.connected and now >= slot.next_byte and slot.sock:
                if slot.sent >= len(self.header) - 1:
                    continue  # never the last byte of the header: never a frame
                try:
                    slot.sock.send(self.header[slot.sent : slot.sent + 1])
                except OSError:
                    continue
                slot.sent += 1
                slot.next_byte = now + self.plan["trickle"]
                self.counts["bytes_trickled"] += 1

    def _send_udp(self, count: int) -> None:
        target = ("127.0.0.1", self.plan["udp_port"])
        for i in range(count):
            sent = self.counts["udp_sent"] + self.counts["udp_send_failed"]
            sock = self.udp[sent % len(self.udp)]
            try:
                sock.sendto(self.datagrams[sent % len(self.datagrams)], target)
            except OSError:
                self.counts["udp_send_failed"] += 1
            else:
                self.counts["udp_sent"] += 1
            for udp in self.udp if i % 64 == 0 else ():
                try:
                    while udp.recv(2048):  # the gateway's answers to what it let through
                        pass
                except OSError:
                    pass


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    counts = Flood(json.loads(sys.argv[1])).run()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
