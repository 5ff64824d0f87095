"""Where FILE_REQ blocks come from (spec 4.15): the engine reads no file itself."""

from __future__ import annotations

from typing import Protocol


class FileBlocks(Protocol):
    """Reads one block of an offered file; raises :class:`OSError` when it cannot."""

    def read(self, path: str, offset: int, size: int) -> bytes: ...


class DiskFiles:
    """The offered files as the file service copied them to disk."""

    def read(self, path: str, offset: int, size: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)
