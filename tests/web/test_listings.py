"""The admin API's listings: paged, filtered, the same page shape everywhere (D-194)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.trial import unittest

from m2mgw.core.model import (
    Alarm,
    AppNotification,
    CredentialSet,
    LogEntry,
    NotificationState,
    Terminal,
    TerminalState,
)
from m2mgw.core.refusals import Reason
from m2mgw.core.registry import OutgoingSms, SmsState
from m2mgw.protocol.constants import Command
from tests.web import start_gateway


def terminal(index: int, **changes: Any) -> Terminal:
    fields: dict[str, Any] = dict(
        imei=f"86000000000{index:04d}", imsi=f"46000000000{index:04d}",
        serial=f"A97203000000{index:04d}", state=TerminalState.REGISTERED,
        current=CredentialSet(uplink_password="Up123456", downlink_password="Dn654321",
                              base_key="0123456789ABCDEFGHIJKLMN"),
    )
    return Terminal(**{**fields, **changes})


class ListingTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)
        self.registry = self.gw.gateway.registry

    async def get(self, path: str, status: int = 200) -> Any:
        got, body, _ = await self.gw.api("GET", path)
        self.assertEqual(got, status, (path, body))
        return body

    async def walk(self, path: str) -> list[list[Any]]:
        """Follow ``next`` from ``path``: the ids of each page."""
        pages = []
        while path:
            page = await self.get(path)
            pages.append([item.get("id", item.get("serial")) for item in page["items"]])
            path = page["next"]
        return pages

    async def test_terminals_search_state_bearer_and_offset_paging(self) -> None:
        for index in range(5):
            await self.registry.add(terminal(index, msisdn=f"861390000{index:04d}"))
        await self.registry.add(terminal(9, serial=None, imsi=None, current=None,
                                         state=TerminalState.UNREGISTERED))
        online = self.registry.get("A972030000000003")
        online.state, online.bearer = TerminalState.LOGGED_IN, "udp"
        page = await self.get("/terminals?limit=2")
        self.assertEqual((page["total"], len(page["items"])), (6, 2))
        self.assertEqual(page["next"], "/terminals?limit=2&offset=2")
        pages = await self.walk("/terminals?limit=2")
        # By serial; the unregistered one (no serial yet) last.
        self.assertEqual(pages, [["A972030000000000", "A972030000000001"],
                                 ["A972030000000002", "A972030000000003"],
                                 ["A972030000000004", None]])
        page = await self.get("/terminals?search=8613900000002")
        self.assertEqual([t["serial"] for t in page["items"]], ["A972030000000002"])
        page = await self.get("/terminals?search=0009")  # the IMEI of the unregistered one
        self.assertEqual([t["imei"] for t in page["items"]], ["860000000000009"])
        page = await self.get("/terminals?state=online")
        self.assertEqual([t["serial"] for t in page["items"]], ["A972030000000003"])
        page = await self.get("/terminals?state=registered,unregistered&bearer=udp")
        self.assertEqual(page["items"], [])
        page = await self.get("/terminals?state=unregistered")
        self.assertEqual(page["total"], 1)
        for bad in ("state=gone", "limit=0", "limit=1001", "offset=-1", "bearer=x25"):
            await self.get(f"/terminals?{bad}", status=400)

    async def test_requests_page_newest_first_by_cursor(self) -> None:
        await self.registry.add(terminal(1))
        router = self.gw.gateway.router
        ids = [(await router.submit("A972030000000001", Command.CONFIG_GET,
                                    b"\x00\x11\x00\x00")).id for _ in range(5)]
        pages = await self.walk("/requests?limit=2")
        self.assertEqual(pages, [ids[4:2:-1], ids[2:0:-1], ids[:1]])
        page = await self.get("/requests?limit=2")
        self.assertEqual(parse_qs(urlsplit(page["next"]).query),
                         {"limit": ["2"], "before": [str(ids[3])]})
        self.assertNotIn("total", page)
        scoped = await self.walk("/terminals/A972030000000001/requests?state=queued&limit=4")
        self.assertEqual(scoped, [ids[:0:-1], ids[:1]])
        self.assertEqual((await self.get("/requests?state=succeeded"))["items"], [])
        page = await self.get("/queue?limit=3&offset=3")
        self.assertEqual(([r["id"] for r in page["items"]], page["total"], page["next"]),
                         (ids[3:], 5, None))
        await self.get("/terminals/A972030000000404/requests", status=404)

    async def test_alarms_filtered_scoped_and_active(self) -> None:
        await self.registry.add(terminal(1))
        now = self.gw.gateway.reactor.seconds()  # recent: older history is pruned
        for serial, code, status, when in [
            ("A972030000000001", 0x0001, 1, now + 10),
            ("A972030000000001", 0x0002, 1, now + 11),
            ("A972030000000002", 0x0001, 1, now + 12),
            ("A972030000000001", 0x0001, 0, now + 13),
            (None, 0x0003, 1, now + 14),
        ]:
            await self.registry.record_alarm(Alarm(serial=serial, msisdn="8613900000001",
                                                   code=code, type=1, status=status,
                                                   time=when))
        page = await self.get("/alarms")
        self.assertEqual([a["time"] - now for a in page["items"]], [14, 13, 12, 11, 10])
        self.assertEqual(page["items"][0]["code"], "0x0003")
        self.assertEqual(len(await self.walk("/alarms?limit=2")), 3)
        scoped = await self.get("/terminals/A972030000000001/alarms?code=0x0001")
        self.assertEqual([(a["status"], a["raised"]) for a in scoped["items"]],
                         [(0, False), (1, True)])
        page = await self.get("/alarms?serial=A972030000000001&status=1")
        self.assertEqual([a["code"] for a in page["items"]], ["0x0002", "0x0001"])
        active = await self.get("/terminals/A972030000000001/alarms?active=1")
        self.assertEqual([(a["code"], a["id"]) for a in active["items"]], [("0x0002", None)])
        active = await self.get("/alarms?active=1&limit=1")
        self.assertEqual(parse_qs(urlsplit(active["next"]).query),
                         {"limit": ["1"], "offset": ["1"], "active": ["1"]})
        await self.get("/alarms?code=zz", status=400)

    async def test_message_log_of_a_terminal(self) -> None:
        await self.registry.add(terminal(1))
        now = self.gw.gateway.reactor.seconds()
        for index, (direction, event) in enumerate(
            [("in", "login"), ("out", "config-get"), ("in", "heartbeat"), ("in", "logout")]
        ):
            self.registry.log(LogEntry(time=now + index, serial="A972030000000001",
                                       direction=direction, bearer="udp",
                                       command_id=Command.LOGIN, sequence_id=index,
                                       event=event, detail=f"#{index}"))
        self.registry.log(LogEntry(time=now + 9, serial="A972030000000002", direction="in",
                                   event="login"))
        # Unflushed entries are shown too (the log is written in batches).
        page = await self.get("/terminals/A972030000000001/messages")
        self.assertEqual([m["event"] for m in page["items"]],
                         ["logout", "heartbeat", "config-get", "login"])
        self.assertEqual((page["items"][3]["command"], page["items"][3]["command_id"]),
                         ("LOGIN", "0x0001"))
        page = await self.get("/terminals/A972030000000001/messages?direction=in&limit=2")
        self.assertEqual([m["detail"] for m in page["items"]], ["#3", "#2"])
        following = await self.get(page["next"])
        self.assertEqual([m["detail"] for m in following["items"]], ["#0"])
        page = await self.get("/messages?event=login")
        self.assertEqual([m["serial"] for m in page["items"]],
                         ["A972030000000002", "A972030000000001"])
        await self.get("/messages?direction=sideways", status=400)
        await self.get("/terminals/A972030000000009/messages", status=404)

    async def test_sms_outbox_by_state_and_number(self) -> None:
        now = self.gw.gateway.reactor.seconds()
        stored = []
        for index in range(4):
            sms = OutgoingSms(msisdn=f"861390000000{index % 2}", port=2862,
                              message=bytes(28), created_at=now + index)
            stored.append(await self.registry.enqueue_sms(sms))
        stored[0].state, stored[0].parts_sent = SmsState.SENT, 1
        stored[1].state, stored[1].error = SmsState.FAILED, "no network"
        for sms in stored[:2]:
            await self.registry.update_sms(sms)
        page = await self.get("/sms/outbox")
        self.assertEqual([(s["id"], s["state"]) for s in page["items"]],
                         [(4, "pending"), (3, "pending"), (2, "failed"), (1, "sent")])
        self.assertEqual(page["items"][2]["error"], "no network")
        page = await self.get("/sms/outbox?state=failed,sent&msisdn=%2B8613900000001")
        self.assertEqual([s["id"] for s in page["items"]], [2])
        self.assertEqual(await self.walk("/sms/outbox?limit=3"), [[4, 3, 2], [1]])
        await self.get("/sms/outbox?state=lost", status=400)
        await self.get("/sms", status=404)

    async def test_notifications_with_their_delivery_state(self) -> None:
        from m2mgw.app import provision

        for app_id in ("EC0001", "EC0002"):
            await provision.provision(self.registry, {"app_id": app_id, "password": "pw123456"})
        now = self.gw.gateway.reactor.seconds()
        entries = [
            AppNotification(app_id="EC0001", kind="DeliverData", body=b"<a/>", created_at=1.0,
                            next_attempt=now + 3600),
            AppNotification(app_id="EC0001", kind="DeliverData", body=b"<b/>", created_at=2.0,
                            attempts=2, next_attempt=now + 3600),
            AppNotification(app_id="EC0002", kind="NotifyResult", body=b"<c/>", created_at=3.0,
                            state=NotificationState.KEPT, attempts=3),
            AppNotification(app_id="EC0002", kind="DeliverData", body=b"<d/>", created_at=4.0,
                            leased_until=now + 60, next_attempt=now + 3600),
        ]
        for entry in entries:
            await self.registry.enqueue_notification(entry)
        page = await self.get("/notifications")
        self.assertEqual([(n["app_id"], n["delivery"]) for n in page["items"]],
                         [("EC0001", "pending"), ("EC0001", "retrying"), ("EC0002", "kept"),
                          ("EC0002", "leased")])
        self.assertEqual(page["items"][0]["body"], "<a/>")
        page = await self.get("/notifications?app=EC0002&state=kept")
        self.assertEqual([n["kind"] for n in page["items"]], ["NotifyResult"])
        page = await self.get("/notifications?state=pending")  # stored state pending
        self.assertEqual(page["total"], 3)
        page = await self.get("/notifications?limit=3")
        self.assertEqual(page["next"], "/notifications?limit=3&offset=3")
        await self.get("/notifications?app=EC0404", status=404)

    async def test_refusals_of_a_terminal(self) -> None:
        await self.registry.add(terminal(1))
        refusals = self.gw.gateway.engine.refusals
        for reason in (Reason.AUTH_FAILED, Reason.AUTH_FAILED, Reason.MALFORMED):
            refusals.report(reason, "test", serial="A972030000000001")
        body = await self.get("/terminals/A972030000000001/refusals")
        self.assertEqual(body, {"serial": "A972030000000001", "total": 3,
                                "refusals": {"auth-failed": 2, "malformed": 1}})
        await self.registry.add(terminal(2, serial=None, imsi=None, current=None,
                                         state=TerminalState.UNREGISTERED))
        await self.get("/terminals/860000000000002/refusals", status=409)


def test_searching_100k_terminals_is_fast() -> None:
    """The listing filters the registry's cache in Python: well under a second."""
    import time

    from m2mgw.web import views

    terminals = [terminal(i % 10_000, imei=f"86{i:013d}", serial=f"A972{i:012d}",
                          msisdn=f"86139{i:08d}") for i in range(100_000)]
    started = time.perf_counter()
    page = views.list_terminals(terminals, {"search": "a972000000004242"},
                                views.describe_terminal)
    first = views.list_terminals(terminals, {"limit": 100}, views.describe_terminal)
    elapsed = time.perf_counter() - started
    assert [t["imei"] for t in page["items"]] == ["860000000004242"]
    assert (first["total"], len(first["items"])) == (100_000, 100)
    assert elapsed < 1.5, elapsed
