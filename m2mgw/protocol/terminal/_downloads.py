"""Software downloads (4.14, 4.15): the offer a DOWNLOAD_INFO URL makes, and its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16, crc32
from m2mgw.protocol.constants import FileReqStatus
from m2mgw.protocol.errors import BodyError
from m2mgw.protocol.security import NEVER

#: file_block_max: the largest block that never fragments an answer (PD-36).
FILE_BLOCK = 887


@dataclass(frozen=True, slots=True)
class DownloadInfoOffer:
    """The parameters of a DOWNLOAD_INFO URL (4.14)."""

    url: str
    trans_id: int
    size: int
    crc16: int
    crc32: int
    version: str
    force: bool = False


def parse_download_url(url: str, force: bool = False) -> DownloadInfoOffer:
    """Read the query parameters of a DOWNLOAD_INFO URL; BodyError when any is unusable."""
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, strict_parsing=True)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("not an http URL")
        return DownloadInfoOffer(
            url,
            int(query["TRANS_ID"][0], 16),
            int(query["FILE_SIZE"][0]),
            int(query["CRC16"][0], 16),
            int(query["CRC32"][0], 16),
            query["VER_DSC"][0],
            force,
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise BodyError(f"unusable download URL {url!r}: {exc}") from None


def verify_download(data: bytes, offer: DownloadInfoOffer) -> bool:
    """Whether a downloaded file matches the size, CRC16 and CRC32 of its offer (6.5)."""
    return len(data) == offer.size and crc16(data) == offer.crc16 and crc32(data) == offer.crc32


@dataclass(slots=True)
class Transfer:
    """A FILE_REQ download in progress (4.15)."""

    offer: DownloadInfoOffer
    block: int
    data: bytearray = field(default_factory=bytearray)

    def on_block(self, ack: m.FileReqAck) -> tuple[m.FileReq, bool | None]:
        """Check one FILE_REQ_ACK block: the FILE_REQ that follows, and None while the
        transfer goes on, else whether the whole file's CRCs matched."""
        offer, data = self.offer, self.data
        usable = (
            ack.status == 0
            and ack.trans_id == offer.trans_id
            and ack.offset == len(data)
            and crc16(ack.data) == ack.crc16
            and (ack.data or len(data) == offer.size)
        )
        if usable and len(data) + len(ack.data) < offer.size:
            data += ack.data
            return m.FileReq(offer.trans_id, FileReqStatus.BLOCK, len(data), self.block), None
        if usable:
            data += ack.data
        ok = bool(usable) and verify_download(bytes(data), offer)
        status = FileReqStatus.COMPLETE if ok else FileReqStatus.ABORT
        return m.FileReq(offer.trans_id, status, NEVER, 0), ok
