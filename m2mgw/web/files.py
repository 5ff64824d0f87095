"""The HTTP file service behind DOWNLOAD_INFO URLs (spec 4.14, PD-18).

Offering a file copies it under ``[http] files_dir`` in the same pass that computes
its size, CRC16 and CRC32, so what terminals download is exactly what the URL's
checksums describe, even if the operator later edits or removes the source. The copy
runs in the reactor's thread pool when there is one, so a large image does not stall
the protocol. Serving goes through ``twisted.web.static.File``, which does ``HEAD``
and single and multiple ``Range`` requests; a token is served only while its
transaction is active.

What an operator offers through the admin API must already lie under ``files_dir``
(:meth:`FileService.operator_file`, D-320): the gateway reads files its users cannot,
its database and keys among them, and must not hand them out by URL.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import pages, static
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from m2mgw.config import GatewayConfig
from m2mgw.core.model import FileTransaction
from m2mgw.core.registry import Registry
from m2mgw.core.requests import FILES_PATH, RequestError, check_version, download_url
from m2mgw.protocol.checksum import CRC16_INIT, crc16, crc32

log = Logger()

T = TypeVar("T")

CONTENT_TYPE = "application/octet-stream"
BLOCK_SIZE = 1 << 16
TOKEN_BYTES = 8  # 16 hex digits (4.14: at least 16)
MAX_FILE_SIZE = 0xFFFFFFFF  # FILE_SIZE and FILE_REQ offsets are u32 (4.15)


class FileService:
    """Creates file transactions and serves their files over HTTP."""

    def __init__(self, registry: Registry, config: GatewayConfig, clock: IReactorTime):
        self.registry = registry
        self.config = config
        self.clock = clock

    # ------------------------------------------------------------------ offering

    def offer(self, serial: str, path: str, version: str) -> Deferred[FileTransaction]:
        """Copy ``path`` for ``serial``'s update ``version``; fires once stored.

        Fails with LookupError (unknown terminal) or RequestError (unreadable file,
        bad version, URL too long).
        """
        return maybeDeferred(self._offer_checked, serial, path, version)

    def operator_file(self, path: str) -> str:
        """The real path of a file an operator offers, which must lie under ``[http]
        files_dir``: a relative ``path`` starts there, symlinks are resolved before the
        check. RequestError otherwise (D-320)."""
        root = os.path.realpath(self.config.http.files_dir)
        try:
            resolved = os.path.realpath(os.path.join(root, path))
        except ValueError:  # a NUL in the path
            raise RequestError(f"cannot offer {path!r}: not a file name") from None
        if resolved == root or os.path.commonpath((root, resolved)) != root:
            raise RequestError(
                f"cannot offer {path}: only files under [http] files_dir ({root}) are "
                "offered; copy it there first"
            )
        return resolved

    def _offer_checked(self, serial: str, path: str, version: str) -> Deferred[FileTransaction]:
        if self.registry.get(serial) is None:
            raise LookupError(f"unknown terminal {serial}")
        check_version(version)
        name = os.path.basename(path)
        token = secrets.token_hex(TOKEN_BYTES).upper()
        os.makedirs(self.config.http.files_dir, exist_ok=True)
        target = os.path.abspath(os.path.join(self.config.http.files_dir, token))
        d = self._blocking(_copy_with_checksums, path, target)

        def stored(sums: tuple[int, int, int]) -> Deferred[FileTransaction]:
            size, sum16, sum32 = sums
            now = self.clock.seconds()
            tx = FileTransaction(
                trans_id=self.registry.allocate_trans_id(),
                serial=serial,
                token=token,
                path=target,
                name=name,
                version=version,
                size=size,
                crc16=sum16,
                crc32=sum32,
                created_at=now,
                expires_at=now + self.config.protocol.file_transaction_lifetime,
            )
            self.url_for(tx)  # refuse before storing if the URL cannot be sent
            log.info(
                "File {name} ({size} bytes, version {version}) offered to {serial}: "
                "transaction {trans_id}",
                name=name, size=size, version=version, serial=serial, trans_id=f"{tx.trans_id:08X}",
            )
            return self.registry.add_file(tx).addCallback(lambda _: tx)

        def discard(failure: Any) -> Any:
            _remove_quietly(target)
            return failure

        return d.addCallback(stored).addErrback(discard)

    def _blocking(self, call: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run file I/O in the reactor's thread pool, or inline with a fake clock."""
        if IReactorThreads.providedBy(self.clock):
            reactor: Any = self.clock
            return deferToThreadPool(reactor, reactor.getThreadPool(), call, *args)
        return maybeDeferred(call, *args)

    @property
    def public_url(self) -> str:
        """``[http] public_url``: the base of the DOWNLOAD_INFO URLs."""
        return self.config.http.public_url

    def url_for(self, tx: FileTransaction) -> str:
        """The DOWNLOAD_INFO URL of ``tx`` under ``[http] public_url``."""
        return download_url(tx, self.public_url)

    def active(self, tx: FileTransaction | None) -> bool:
        """Served only within ``file_transaction_lifetime`` (4.14), as FILE_REQ is."""
        return tx is not None and tx.expires_at >= self.clock.seconds()

    # ------------------------------------------------------------------ serving

    def resource(self) -> IResource:
        """The site root: ``/wmmp/files/<token>/<name>``, everything else 404."""
        root = node = _Branch()
        *parents, last = FILES_PATH.strip("/").split("/")
        for segment in parents:
            child = _Branch()
            node.putChild(segment.encode("ascii"), child)
            node = child
        node.putChild(last.encode("ascii"), _Tokens(self))
        return root


class _Branch(Resource):
    """A path prefix: not a file itself."""

    def render(self, request: Request) -> bytes:
        return _missing().render(request)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return _missing()


class _Tokens(Resource):
    """``<token>/<name>``: the file of an active transaction, else 404."""

    def __init__(self, files: FileService) -> None:
        super().__init__()
        self.files = files

    def getChild(self, path: bytes, request: Request) -> IResource:
        tx = self.files.registry.file_by_token(path.decode("ascii", "replace"))
        if not self.files.active(tx) or len(request.postpath) != 1:
            return _missing()
        assert tx is not None
        if request.postpath[0] != tx.name.encode("utf-8"):  # already percent-decoded
            return _missing()
        request.prepath.append(request.postpath.pop())
        served = static.File(tx.path, defaultType=CONTENT_TYPE)
        served.type, served.encoding = CONTENT_TYPE, None
        log.info(
            "HTTP {method} of transaction {trans_id} by {peer}",
            method=request.method.decode("ascii", "replace"),
            trans_id=f"{tx.trans_id:08X}",
            peer=request.getClientAddress(),
        )
        return served


def _missing() -> IResource:
    return pages.notFound("No such file", "The file does not exist or its offer has expired.")


def _copy_with_checksums(source: str, target: str) -> tuple[int, int, int]:
    """Copy block by block, returning (size, CRC16, CRC32) of what was written."""
    if not os.path.isfile(source):
        raise RequestError(f"cannot offer {source}: not an existing regular file")
    size, sum16, sum32 = 0, CRC16_INIT, 0
    partial = target + ".part"
    try:
        with open(source, "rb") as src, open(partial, "wb") as dst:
            while block := src.read(BLOCK_SIZE):
                size += len(block)
                if size > MAX_FILE_SIZE:
                    raise RequestError(f"{source} is larger than {MAX_FILE_SIZE} bytes")
                sum16 = crc16(block, sum16)
                sum32 = crc32(block, sum32)
                dst.write(block)
        os.replace(partial, target)
    except OSError as exc:
        _remove_quietly(partial)
        raise RequestError(f"cannot offer {source}: {exc.strerror or exc}") from None
    except RequestError:
        _remove_quietly(partial)
        raise
    return size, sum16, sum32


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
