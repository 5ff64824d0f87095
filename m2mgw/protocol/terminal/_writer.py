"""How the terminal's messages go on the wire (6.2, 6.4, 7, 10.4), habits (1.6) included."""

from __future__ import annotations

from m2mgw.protocol.codec import ENCRYPTED_FLAG, FRAGMENT_FLAG, build_frame, encrypted_container
from m2mgw.protocol.constants import ACK_BIT, Command, Flag
from m2mgw.protocol.fragment import FragmentPart, FragmentSender, TransIdCounter
from m2mgw.protocol.header import Header
from m2mgw.protocol.security import Cipher, DigestKey
from m2mgw.protocol.terminal._credentials import Keyring
from m2mgw.protocol.terminal._habits import StackHabits
from m2mgw.protocol.terminal._identity import TerminalIdentity

# Never encrypted (6.4.3).
_PLAIN_COMMANDS = frozenset({Command.REGISTER, Command.LOGIN, Command.HEART_BEAT})


class Writer:
    """Numbers requests, seals bodies in ``E042``, cuts long ones into ``4008`` parts, signs.

    The flags and digests are what ``habits`` makes a deployed stack send; on SMS no
    digest, encryption or fragmentation is used (10.4). ``stats`` counts what is sent.
    """

    def __init__(
        self,
        identity: TerminalIdentity,
        keys: Keyring,
        stats: dict[str, int],
        *,
        bearer: str,
        habits: StackHabits,
        version: int,
        encrypt_bodies: bool,
        first_sequence: int,
        fragment_threshold: int,
    ) -> None:
        self._identity = identity
        self._keys = keys
        self._stats = stats
        self._bearer = bearer
        self._habits = habits
        self._version = version
        self._encrypt_bodies = encrypt_bodies
        self._sequence = first_sequence
        self._threshold = fragment_threshold
        self._trans_ids = TransIdCounter()

    def next_sequence(self) -> int:
        """The Sequence_ID of the next request: 1 to 2^32 - 1, then 1 again."""
        sequence_id = self._sequence
        self._sequence = self._sequence % 0xFFFFFFFF + 1
        return sequence_id

    def encrypting(self, command: int, cipher: Cipher | None) -> bool:
        """Whether a body of ``command`` goes in ``E042`` under the session's ``cipher``."""
        return (
            self._encrypt_bodies
            and cipher is not None
            and self._bearer != "sms"
            and (command & ~ACK_BIT) not in _PLAIN_COMMANDS
        )

    def seal(
        self, command: int, body: bytes, flag: int, cipher: Cipher | None
    ) -> tuple[bytes, int, bool]:
        """The body and flag to send, and whether the body was encrypted (6.4.4)."""
        if body and cipher is not None and self.encrypting(command, cipher):
            return encrypted_container(cipher, body), ENCRYPTED_FLAG, True
        return body, flag, False

    def fragments(self, body: bytes) -> FragmentSender | None:
        """The parts of a body over the threshold (7); never on SMS."""
        if len(body) > self._threshold and self._bearer != "sms":
            return FragmentSender(body, self._trans_ids.next(), self._threshold)
        return None

    def flag(self, flag: int) -> int:
        """The flag a stack that always sends 0x00 sends; a container keeps its bits."""
        if self._habits.zero_flag and not flag & Flag.CONTAINER:
            return Flag.NONE
        return flag

    def request(
        self, command: int, sequence_id: int, body: bytes, *, flag: int, timestamp: int,
        key: DigestKey | None,
    ) -> bytes:  # fmt: skip
        """One whole request, signed with ``key`` as this stack signs it (C1, C4)."""
        habits = self._habits
        return self.frame(
            command, sequence_id, body, flag=flag, timestamp=timestamp, key=key,
            flag_digest=command not in habits.unflagged_digest,
            header_only=command in habits.header_only_digest,
        )  # fmt: skip

    def part(
        self, command: int, sequence_id: int, part: FragmentPart, *, encrypted: bool,
        timestamp: int,
    ) -> bytes:  # fmt: skip
        """One ``4008`` message of a request's part exchange, in its Command_ID (7.3)."""
        flag = ENCRYPTED_FLAG if encrypted else FRAGMENT_FLAG
        return self.frame(
            command, sequence_id, part.encode_tlv(), flag=flag, timestamp=timestamp,
            key=self._keys.uplink,
        )  # fmt: skip

    def answer(self, header: Header, body: bytes, flag: int, timestamp: int) -> bytes:
        """An answer in the request's version and Sequence_ID (8.2); a C3 stack answers
        unsigned, a C8 one in its own version."""
        habits = self._habits
        signer = None if habits.unsigned_answers else self._keys.uplink
        if signer is None:
            flag &= ~Flag.DIGEST
        return self.frame(
            header.command_id | ACK_BIT, header.sequence_id, body, flag=self.flag(flag),
            timestamp=timestamp, key=signer, version=habits.answer_version or header.version,
        )  # fmt: skip

    def frame(
        self, command: int, sequence_id: int, body: bytes, *, flag: int, timestamp: int,
        key: DigestKey | None, version: int | None = None, flag_digest: bool = True,
        header_only: bool = False,
    ) -> bytes:  # fmt: skip
        if self._bearer == "sms":
            key, flag = None, flag & ~(Flag.DIGEST | Flag.CONTAINER)
        frame = build_frame(
            command, sequence_id, self._identity.serial, body,
            version=version or self._version, flag=flag, key=key, timestamp=timestamp,
            flag_digest=flag_digest, header_only=header_only,
        )  # fmt: skip
        self.count(frame)
        return frame

    def count(self, frame: bytes) -> None:
        self._stats["sent"] += 1
        self._stats["bytes"] += len(frame)
