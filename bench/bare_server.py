"""The floor for ``gateway.py``: a Twisted TCP server that only frames and echoes.

It cuts the stream with the gateway's own :class:`StreamFramer` and writes every
message straight back, so the load client sees one "answer" per request with the
same Sequence_ID. Whatever the gateway does beyond this (parse, verify, answer,
record) is what the benchmark's ratio measures. Prints ``listening PORT`` once
bound; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twisted.internet import protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import raise_nofile_limit

from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import StreamFramer


class EchoFramed(protocol.Protocol):
    """Frames by Total_Length like the gateway's TCP bearer, and echoes each frame."""

    def __init__(self) -> None:
        self.framer = StreamFramer()

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FramingError:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        write = self.transport.write  # type: ignore[union-attr]
        for frame in frames:
            write(frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    parser.add_argument("--nofile", type=int, default=65536, help="open-files limit wanted")
    args = parser.parse_args(argv)
    raise_nofile_limit(args.nofile)
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(EchoFramed)
    factory.noisy = False
    port = reactor.listenTCP(args.port, factory, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
