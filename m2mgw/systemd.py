"""systemd integration without a dependency: ``sd_notify`` and inherited sockets (D-162).

``Type=notify`` units learn that the gateway is ready, and that it stops, from
datagrams on ``$NOTIFY_SOCKET`` (sd_notify(3)): ``READY=1`` once every listener is
up, ``STOPPING=1`` when shutdown begins, ``STATUS=...`` for ``systemctl status``.
The protocol is one ``AF_UNIX`` datagram of newline-separated assignments, so a few
lines of socket code replace libsystemd. Outside systemd ``$NOTIFY_SOCKET`` is unset
and the notifier does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger

from m2mgw.config import endpoint_parts

log = Logger()


class Notifier:
    """Sends sd_notify(3) assignments to the service manager, if there is one."""

    def __init__(self, address: str | None = None) -> None:
        #: The socket address: a path, or ``@name`` for the abstract namespace.
        self.address = address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for with ``$NOTIFY_SOCKET`` (disabled without it)."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log.warn("NOTIFY_SOCKET={address!r} is not a path or @name: not notifying",
                     address=address)
            address = None
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``READY=1``-style assignments in one datagram; False if not delivered.

        Never blocks and never raises: a service manager that is gone must not stop
        the gateway, so a failure is one warning.
        """
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message, socket.MSG_DONTWAIT, target)
        except OSError as exc:
            log.warn("Cannot notify systemd at {address}: {error}",
                     address=self.address, error=exc.strerror or exc)
            return False
        return True


def inherited_socket_problem(description: str, error: Exception) -> str | None:
    """Why a ``systemd:`` endpoint found no socket, in words; None for other endpoints.

    Twisted's parser indexes the inherited descriptors directly, so a gateway started
    without its ``.socket`` unit gets a bare ``IndexError``/``KeyError``.
    """
    kind, _, kwargs = endpoint_parts(description)
    if kind != "systemd" or not isinstance(error, LookupError):
        return None
    which = f"named {kwargs['name']!r}" if "name" in kwargs else f"at index {kwargs.get('index')}"
    return f"systemd passed no socket {which} (start m2mgw through its .socket unit)"
