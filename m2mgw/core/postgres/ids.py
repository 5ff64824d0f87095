"""Ids of new rows on PostgreSQL: blocks of the tables' sequences, numbered in memory
(D-380).

The registry gives a new terminal, request, SMS, notification or application message
its id synchronously, before anything is written: the cache files it by id at once.
The SQLite registry counts in memory, which several nodes sharing the tables cannot.
So each node takes blocks of ids from the table's identity sequence (``INCREMENT BY
1000``, migration 003: one ``nextval`` is the first id of a block of 1000 nobody else
gets) and numbers rows from them in memory. :class:`IdBlocks` takes the next blocks
before the ones at hand run out, on a connection of its own so that it never waits
behind the writes; a node that uses ids fast takes more blocks at a time. Ids grow on
each node (the outboxes rely on it); across nodes they are unique, not in time order.

If the ids at hand run out all the same (a burst within one database round trip),
the next blocks are taken synchronously, holding the reactor for that round trip, not
refused; a failure of that refuses new rows for a few seconds rather than holding the
reactor again at once. At close, the unused ids are given back when nobody took a
block after them, so that a node restarted alone goes on where it stopped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import psycopg
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.core.postgres.connection import Cursor, Database, PostgresError, connect, one_line
from m2mgw.core.registry.interfaces import RegistryError

_log = Logger()

#: The advisory lock (two-key form, beside the migrations' and the outboxes') that
#: taking blocks of ids and giving them back take turns on.
ID_BLOCK_LOCK = (0x6D326F, 0)
#: The most blocks one take asks for.
TAKE_MAX = 64
#: Seconds a synchronous take may hold the reactor (connecting and the statement).
SYNC_TIMEOUT = 2
#: Seconds new rows are refused after a synchronous take failed.
SYNC_PAUSE = 5.0


def _sequence(table: str) -> str:
    return f"pg_get_serial_sequence('{table}', 'id')"


def take_blocks(cursor: Cursor, wanted: Mapping[str, int]) -> dict[str, list[range]]:
    """For each table, as many new blocks of ids as ``wanted`` asks, in id order."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", ID_BLOCK_LOCK)
    taken = {}
    for table, count in wanted.items():
        cursor.execute(f"SELECT seqincrement FROM pg_sequence "
                       f"WHERE seqrelid = {_sequence(table)}::regclass")
        increment = cursor.fetchone()[0]
        cursor.execute(f"SELECT nextval({_sequence(table)}) FROM generate_series(1, %s)",
                       (count,))
        taken[table] = [range(start, start + increment)
                        for start in sorted(row[0] for row in cursor.fetchall())]
    return taken


def give_back(cursor: Cursor, unused: Mapping[str, tuple[int, int]]) -> list[str]:
    """Return unused ids: for each table, ``(first, newest)`` says that every id from
    ``first`` to the end of the block that starts at ``newest`` is this node's and
    unused. Its sequence restarts at ``first`` if ``newest`` is still the last block
    it handed out (nobody took one since); the tables whose ids were given back.

    Inserts into the tables wait meanwhile (an insert leaving the id to its default
    takes a block too), and takes of blocks take turns on the same lock."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", ID_BLOCK_LOCK)
    returned = []
    for table, (first, newest) in sorted(unused.items()):
        cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        cursor.execute(f"SELECT {_sequence(table)}")
        cursor.execute(f"SELECT last_value, is_called FROM {cursor.fetchone()[0]}")
        last, called = cursor.fetchone()
        if called and last == newest:
            cursor.execute(f"SELECT setval({_sequence(table)}, %s, false)", (first,))
            returned.append(table)
    return returned


class _Held:
    """One table's blocks at hand, the first one partly used."""

    __slots__ = ("at_hand", "blocks", "last", "newest", "size", "taking", "want")

    def __init__(self, blocks: list[range]) -> None:
        self.blocks: deque[range] = deque()
        self.size = len(blocks[0])
        #: The last id given out (ids on a node only grow), the newest block's start.
        self.last = blocks[0].start - 1
        self.newest = 0
        self.at_hand = 0
        #: Blocks the next take asks for: doubled whenever the ids ran out.
        self.want = 1
        self.taking = False
        self.add(blocks)

    def add(self, blocks: list[range]) -> None:
        """Keep ``blocks`` that lie above every id given out (one taken before a later
        one, arriving after it, would make ids go back)."""
        fresh = [b for b in blocks if b.start > self.last and b.start > self.newest]
        if fresh:
            self.blocks.extend(fresh)
            self.newest = fresh[-1].start
            self.at_hand = sum(len(b) for b in self.blocks)

    @property
    def low(self) -> bool:
        """Whether the next take is due: half of what one take brings is left."""
        return self.at_hand <= self.want * self.size // 2

    def unused(self) -> tuple[int, int] | None:
        """``(first, newest)`` for :func:`give_back`: the run of unused ids that ends
        with the newest block."""
        if not self.blocks:
            return None
        first = self.blocks[-1].start
        for block in reversed(list(self.blocks)[:-1]):
            if block.stop != first:
                break
            first = block.start
        return first, self.newest


class IdBlocks:
    """The ids one node holds for new rows of each table it numbers.

    ``first`` are the blocks taken at open; ``db`` (a :class:`Database` of its own)
    takes the next ones, and ``url`` is connected to synchronously when they run out.
    """

    def __init__(self, clock: IReactorTime, db: Database, url: str, name: str,
                 first: Mapping[str, list[range]]) -> None:
        self._clock = clock
        self._db = db
        self._url = url
        self._name = name
        self._tables = {table: _Held(blocks) for table, blocks in first.items()}
        self._sync: psycopg.Connection[Any] | None = None
        self._paused_until = 0.0
        self._closed = False
        #: Takes that held the reactor because the ids had run out (a metric).
        self.synchronous_takes = 0

    def peek(self, table: str) -> int:
        """The id the next new row of ``table`` gets."""
        held = self._tables[table]
        if not held.blocks:
            self._take_now(table, held)
        return held.blocks[0].start

    def used(self, table: str) -> None:
        """The id :meth:`peek` gave is taken."""
        held = self._tables[table]
        block = held.blocks[0]
        held.last = block.start
        if len(block) == 1:
            held.blocks.popleft()
        else:
            held.blocks[0] = block[1:]
        held.at_hand -= 1
        if held.low and not held.taking:
            self._take_later(table, held)

    def unused(self) -> dict[str, tuple[int, int]]:
        """What :func:`give_back` may return, by table."""
        return {table: run for table, held in self._tables.items()
                if (run := held.unused()) is not None}

    def close(self) -> None:
        """Take no more blocks."""
        self._closed = True
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def _take_later(self, table: str, held: _Held) -> None:
        held.taking = True

        def taken(blocks: dict[str, list[range]]) -> None:
            held.taking = False
            if not self._closed:
                held.add(blocks[table])

        def failed(failure: Failure) -> None:
            held.taking = False  # the next id used tries again
            _log.warn("registry {url}: cannot take {table} ids: {why}", url=self._name,
                      table=table, why=failure.getErrorMessage())

        self._db.transaction(take_blocks, {table: held.want}).addCallbacks(taken, failed)

    def _take_now(self, table: str, held: _Held) -> None:
        """The ids ran out: take twice as many blocks as last time, holding the reactor
        for the round trip, unless the last such take failed a moment ago."""
        if self._closed:
            raise RegistryError(f"{self._name}: registry is not open")
        if self._clock.seconds() < self._paused_until:
            raise RegistryError(f"{self._name}: no {table} id at hand (the database did "
                                "not answer a moment ago)")
        held.want = min(TAKE_MAX, held.want * 2)
        started = time.monotonic()
        try:
            if self._sync is None or self._sync.broken or self._sync.closed:
                self._sync = connect(self._url, connect_timeout=str(SYNC_TIMEOUT))
                self._sync.execute(f"SET statement_timeout = '{SYNC_TIMEOUT}s'")
            with self._sync.transaction(), self._sync.cursor() as cursor:
                blocks = take_blocks(cursor, {table: held.want})
        except (psycopg.Error, PostgresError) as e:
            self._paused_until = self._clock.seconds() + SYNC_PAUSE
            why = e if isinstance(e, PostgresError) else one_line(e)
            raise RegistryError(f"{self._name}: no {table} id at hand: {why}") from None
        held.add(blocks[table])
        self.synchronous_takes += 1
        _log.warn("registry {url}: {table} ids ran out; took {count} blocks holding the "
                  "reactor {ms:.1f} ms", url=self._name, table=table, count=held.want,
                  ms=(time.monotonic() - started) * 1000)
