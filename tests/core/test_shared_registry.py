"""SharedRegistry: what a node re-reads of the changes other nodes made (D-386).

Two registries on one MemoryStore stand for two nodes on one database: node A
writes, node B re-reads, on a task.Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from m2mgw.core.model import Application, AppMessage, AppNotification, RequestState, Terminal
from m2mgw.core.model import TerminalState as S
from m2mgw.core.registry.memory import MemoryRegistry, MemoryStore
from m2mgw.core.registry.shared import SESSION_FIELDS, Change, SharedRegistry
from tests.core.test_memory_registry import SERIAL, request, result


class SharedMemory(SharedRegistry, MemoryRegistry):
    """The mixin over the memory backend, as a node's registry over PostgreSQL."""


def nodes(clock: Clock) -> tuple[SharedMemory, SharedMemory]:
    store = MemoryStore()
    a, b = SharedMemory(clock, store, name="a"), SharedMemory(clock, store, name="b")
    result(a.open())
    result(b.open())
    return a, b


def terminal(**kw: Any) -> Terminal:
    return Terminal(imei="860000000000001", serial=SERIAL, imsi="460000000000001", **kw)


def test_a_record_new_elsewhere_is_adopted_changed_is_copied_gone_is_evicted() -> None:
    clock = Clock()
    a, b = nodes(clock)
    changes: list[Change] = []
    a.change_observers.append(changes.append)
    added = result(a.add(terminal(msisdn="13800000001")))
    result(a.store_config(SERIAL, {0x3001: b"v1"}, "reported"))
    assert b.get(SERIAL) is None
    result(b.reload_terminals([SERIAL]))
    copy = b.get(SERIAL)
    assert copy is not None and copy.id == added.id and copy is not added
    assert b.by_msisdn("13800000001") is copy
    assert b.config_values(SERIAL) == {0x3001: b"v1"}

    added.msisdn, added.enabled = "13800000002", False
    result(a.save(added))
    result(b.reload_terminals([SERIAL]))
    assert b.get(SERIAL) is copy  # the same live instance, brought up to date
    assert not copy.enabled
    assert b.by_msisdn("13800000002") is copy and b.by_msisdn("13800000001") is None

    result(a.remove(SERIAL))
    result(b.reload_terminals([SERIAL]))
    assert b.get(SERIAL) is None and b.by_imei(added.imei) is None
    assert b.config_values(SERIAL) == {}
    assert changes == [Change("terminal", SERIAL)] * 4  # add, config, save, remove


def test_the_session_holder_keeps_its_session_fields() -> None:
    clock = Clock()
    a, b = nodes(clock)
    result(a.add(terminal()))
    result(b.reload_terminals([SERIAL]))
    mine = b.get(SERIAL)
    assert mine is not None
    mine.state, mine.session_timestamp, mine.seq_counter = S.LOGGED_IN, 1234, 77
    theirs = a.get(SERIAL)
    assert theirs is not None
    theirs.enabled, theirs.seq_counter, theirs.state = False, 5, S.LOGGED_OUT
    result(a.save(theirs))
    result(b.reload_terminals([SERIAL], held={SERIAL}))
    assert not mine.enabled  # the administrator's change
    assert {"state", "session_timestamp", "seq_counter"} <= SESSION_FIELDS
    assert (mine.state, mine.session_timestamp, mine.seq_counter) == (S.LOGGED_IN, 1234, 77)


def test_queues_are_read_when_needed_and_forgotten() -> None:
    clock = Clock()
    a, b = nodes(clock)
    result(a.add(terminal()))
    queued: list[int] = []
    a.queued_observers.append(lambda r: queued.append(r.id or 0))
    first = result(a.enqueue(request()))
    second = result(a.enqueue(request()))
    assert queued == [first.id, second.id]
    assert b.queued(SERIAL) == []
    loaded = result(b.reload_queue(SERIAL))
    assert [r.id for r in loaded] == [first.id, second.id]
    # A finishes the first; B, told, finds it left the queue.
    first.state = RequestState.SUCCEEDED
    result(a.update_request(first))
    loaded = result(b.reload_queue(SERIAL))
    assert [r.id for r in loaded] == [second.id]
    done = b.request(first.id or 0)
    assert done is not None and done.state == RequestState.SUCCEEDED
    b.forget_queue(SERIAL)
    assert b.queued(SERIAL) == [] and b.active_requests() == []


def test_opening_caches_no_queue_and_no_notification() -> None:
    clock = Clock()
    store = MemoryStore()
    single = MemoryRegistry(clock, store)
    result(single.open())
    result(single.add(terminal()))
    result(single.enqueue(request()))
    result(single.enqueue_notification(
        AppNotification(app_id="app", kind="DeliverData", body=b"<x/>", created_at=1.0)))
    result(single.close())
    shared = SharedMemory(clock, store)
    result(shared.open())
    assert shared.get(SERIAL) is not None
    assert shared.queued(SERIAL) == [] and shared.notifications("app") == []
    entry = result(shared.enqueue_notification(
        AppNotification(app_id="app", kind="DeliverData", body=b"<y/>", created_at=2.0)))
    assert entry.id is not None and shared.notification(entry.id) is None


def test_applications_and_messages_are_read_again() -> None:
    clock = Clock()
    a, b = nodes(clock)
    app = Application(app_id="app", password="pw", ec_code="EC1", base_key="k" * 16)
    result(a.add_application(app))
    assert b.application("app") is None
    result(b.reload_applications(["app"]))
    copy = b.application("app")
    assert copy is not None and b.application_by_ec("EC1") is copy
    app.ec_code, app.enabled = "EC2", False
    result(a.save_application(app))
    result(b.reload_applications())
    assert b.application("app") is copy
    assert b.application_by_ec("EC2") is copy and b.application_by_ec("EC1") is None
    assert not copy.enabled

    message = result(b.add_app_message(AppMessage(app_id="app", operation="SendData",
                                                  serial=SERIAL, created_at=1.0)))
    theirs = result(a.app_message(message.id or 0))
    assert theirs is not None and theirs is not message
    theirs.state = "ACKED"
    result(a.update_app_message(theirs))
    assert result(b.app_message(message.id or 0)) is message
    assert message.state == "ACKED"


def test_reading_everything_again_adopts_updates_and_evicts() -> None:
    clock = Clock()
    a, b = nodes(clock)
    first = result(a.add(terminal()))
    result(b.reload_terminals())
    copy = b.get(SERIAL)
    assert copy is not None and copy.enabled
    first.enabled = False
    result(a.save(first))
    other = "A972030000000002"
    result(a.add(Terminal(imei="860000000000002", serial=other)))
    result(b.reload_terminals())
    assert b.get(SERIAL) is copy and not copy.enabled
    added = b.get(other)
    assert added is not None and added.imei == "860000000000002"
    result(a.remove(SERIAL))
    result(b.reload_terminals())
    assert b.get(SERIAL) is None and b.get(other) is added
