"""Admin API authentication: bearer tokens from ``[admin] tokens_file`` (D-190..D-192).

The file holds one token per line (blank lines and ``#`` comments ignored). The
gateway creates it, mode 0600 with one random token, on its first start; operators
add or revoke tokens by editing it: it is read again when it changes, so no restart
is needed. A request presents a token as ``Authorization: Bearer TOKEN`` or in the
``m2mgw_admin`` cookie that ``POST /session`` sets for the browser console. The CLI
reads the same file and sends its first token.

An admin API reachable from other hosts without a token would hand out terminal
secrets and the power to reconfigure devices, so :meth:`TokenFile.prepare` refuses a
non-loopback ``[admin] listen`` unless the file already holds a token.

:func:`host_allowed` holds requests to a Host header that names this listener, so that
a web page whose name was rebound to the gateway's address (DNS rebinding) is not
answered as if it came from the operator's own browser tab (D-318).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from typing import Any

from twisted.logger import Logger

from m2mgw.config import endpoint_parts

log = Logger()

COOKIE = "m2mgw_admin"
#: What a redacted secret looks like in every admin and CLI output (D-193).
MASK = "***"
_HEADER = (
    "# m2mgw admin API tokens: one a line; the CLI uses the first.\n"
    "# Send one as 'Authorization: Bearer TOKEN'. Edit freely: the gateway rereads it.\n"
)


class AuthSetupError(Exception):
    """The admin API cannot start safely; the message is the one line for the operator."""


def read_tokens(path: str) -> list[str]:
    """The tokens in ``path``, in order; OSError when it cannot be read."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def first_token(path: str) -> str | None:
    """The token a client uses: the first of the file; None without file or token."""
    try:
        tokens = read_tokens(path)
    except FileNotFoundError:
        return None
    return tokens[0] if tokens else None


def create_tokens_file(path: str) -> str:
    """Write a new file, mode 0600, with one random token; FileExistsError if there."""
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{_HEADER}{token}\n")
    return token


def is_local(listen: str) -> bool:
    """Whether an endpoint description only accepts this machine: a TCP interface on
    127.x, ``::1`` or ``localhost``, or a ``unix:`` socket (file permissions guard it).
    All interfaces and ``systemd:`` (the address is systemd's) count as not local."""
    kind, _, kwargs = endpoint_parts(listen)
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    host = kwargs.get("interface", "").strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The names a request reaching the listener over loopback (or a unix: socket) may give.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def host_of(header: bytes) -> str | None:
    """The host of a Host header value: lower case, without port, brackets or final dot;
    None when it is not a host[:port]."""
    text = header.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        host, _, port = text.partition(":")
    if port and not port.isdigit():
        return None  # also an IPv6 address without brackets
    return host.rstrip(".") or None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, IPv4-mapped IPv6 ones as IPv4; None for a name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_allowed(request: Any, allowed: tuple[str, ...]) -> bool:
    """Whether the request's Host names the listener it reached (D-318): the local
    address of its connection; localhost, 127.0.0.1 or ::1 over loopback or a unix:
    socket; or a name of ``allowed``. The port is not compared (an SSH tunnel changes
    it, and rebinding cannot choose it). No Host at all (HTTP/1.0) passes: browsers
    always send one."""
    values = request.requestHeaders.getRawHeaders(b"host")
    if not values:
        return True
    host = host_of(values[0]) if len(values) == 1 else None
    if host is None:
        return False
    if host in allowed:
        return True
    local = getattr(request.getHost(), "host", None)
    if local is None:  # a unix: socket, reached from this machine only
        return host in LOOPBACK_HOSTS
    own = _address(local)
    if own is not None and own.is_loopback and host in LOOPBACK_HOSTS:
        return True
    return own is not None and _address(host) == own


def presented_token(request: Any) -> str | None:
    """The token a request carries: the bearer header first, else the console cookie."""
    header = request.getHeader(b"authorization")
    if header:
        scheme, _, value = header.decode("utf-8", "replace").strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    cookie = request.getCookie(COOKIE.encode("ascii"))
    return cookie.decode("utf-8", "replace") if cookie else None


class TokenFile:
    """The gateway's admin tokens, reread whenever the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens: tuple[bytes, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        #: Why the file gave no tokens ("no such file or directory"), or None.
        self.problem: str | None = None

    def prepare(self, listen: str | None) -> None:
        """At start-up: create the file if missing on a local ``listen``; refuse a
        ``listen`` that accepts other hosts unless a token guards it (AuthSetupError)."""
        if listen is None:
            return
        local = is_local(listen)
        if local and not os.path.lexists(self.path):
            try:
                create_tokens_file(self.path)
            except FileExistsError:
                pass
            except OSError as exc:
                raise AuthSetupError(
                    f"cannot create the admin token file {self.path}: {error_text(exc)}"
                ) from None
            else:
                log.info("Created {path} with a new admin API token", path=self.path)
        self._reload()
        if not self._tokens and not local:
            raise AuthSetupError(
                f"[admin] listen = {listen} accepts other hosts, but {self.path} holds no "
                f"admin token ({self.problem or 'none in the file'}): add one, or listen "
                "on loopback"
            )
        if not self._tokens:
            log.warn("{path} holds no admin token ({problem}): every admin request but "
                     "/health is refused", path=self.path, problem=self.problem or "empty")
        elif (mode := _mode(self.path)) is not None and mode & 0o077:
            log.warn("{path} is readable by other users (mode {mode:o}): chmod 600 it",
                     path=self.path, mode=mode)

    def allows(self, request: Any) -> bool:
        """Whether the request presents one of the file's tokens (constant time)."""
        token = presented_token(request)
        return token is not None and self.valid(token)

    def valid(self, token: str) -> bool:
        self._reload()
        presented = token.encode("utf-8", "replace")
        # Compare with every token, so the time does not tell which one nearly matched.
        matches = [hmac.compare_digest(presented, known) for known in self._tokens]
        return any(matches)

    def _reload(self) -> None:
        """Read the file again if its inode, size or mtime changed; gone: no tokens."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            if self._stamp is not None:
                log.warn("{path} is gone: admin requests are refused", path=self.path)
            self._tokens, self._stamp, self.problem = (), None, error_text(exc)
            return
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            tokens = read_tokens(self.path)
            self.problem = None
        except (OSError, UnicodeDecodeError) as exc:
            self.problem = error_text(exc)
            log.warn("Cannot read {path} ({problem}): admin requests are refused",
                     path=self.path, problem=self.problem)
            tokens = []
        self._tokens = tuple(t.encode("utf-8") for t in tokens)
        self._stamp = stamp


def _mode(path: str) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def error_text(error: Exception) -> str:
    """An OS error in words ("permission denied"), like the gateway's start-up lines."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[:1].lower() + error.strerror[1:]
    return str(error)
