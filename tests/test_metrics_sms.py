"""SMS and modem metrics: a real gateway on the modem emulator over a pty (issue #9).

The driver's ``AT+CSQ`` had never been sent; the SMS service now reads it when the
modem is ready and every ``signal_interval`` while it stays so (D-216).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

from prometheus_client import generate_latest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from m2mgw.service import GatewayService
from m2mgw.sms.service import SmsBearer
from m2mgw.tools.modem_emulator import ModemEmulator
from tests.e2e.support import gateway_config, until
from tests.e2e.test_metrics import Samples, samples, value
from tests.sms.test_gateway_sms import FAST, MSISDN, SMS_CONFIG, WAKEUP

TUNING = dataclasses.replace(FAST, signal_interval=0.1)


class ModemMetricsTest(unittest.TestCase):
    timeout = 15

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        directory = tempfile.mkdtemp(prefix="m2mgw-sms-metrics-")
        self.addCleanup(shutil.rmtree, directory)
        link = os.path.join(directory, "modem")
        self.emulator = ModemEmulator(reactor, link)
        self.emulator.start()
        self.addCleanup(self.emulator.stop)
        config = gateway_config(os.path.join(directory, "m2mgw.db"), SMS_CONFIG.format(link=link))
        self.gateway = GatewayService(config, reactor)
        assert self.gateway.sms is not None
        self.sms = self.gateway.sms
        self.sms.tuning = TUNING
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        yield self.gateway.ready
        protocol = yield self.sms.serial.when_connected()
        yield protocol.when_ready()

    def scrape(self) -> Samples:
        return samples(generate_latest(self.gateway.metrics))

    def names(self) -> set[str]:
        return {name for name, _ in self.scrape()}

    def readings(self) -> int:
        return self.emulator.commands.count("AT+CSQ")

    @defer.inlineCallbacks
    def test_signal_is_read_with_csq_while_the_modem_is_open(self):  # type: ignore[no-untyped-def]
        yield until(lambda: "m2mgw_modem_signal_rssi" in self.names(), "a signal reading")
        scraped = self.scrape()
        self.assertEqual(value(scraped, "m2mgw_modem_up"), 1)
        self.assertEqual(value(scraped, "m2mgw_modem_signal_rssi"), 20)  # "+CSQ: 20,99"
        self.assertEqual(value(scraped, "m2mgw_modem_signal_dbm"), -73)
        first = self.readings()
        yield until(lambda: self.readings() >= first + 2, "two more readings")

        self.emulator.stop()  # the port disappears
        yield until(lambda: value(self.scrape(), "m2mgw_modem_up") == 0, "the modem down")
        self.assertNotIn("m2mgw_modem_signal_rssi", self.names())
        self.assertNotIn("m2mgw_modem_signal_dbm", self.names())

    @defer.inlineCallbacks
    def test_sms_sent_received_and_failed(self):  # type: ignore[no-untyped-def]
        bearer = SmsBearer(self.sms, MSISDN)
        bearer.send(WAKEUP)
        self.assertEqual(value(self.scrape(), "m2mgw_sms_outbox_messages"), 1)
        yield until(lambda: len(self.emulator.sent) == 1, "the SMS to go out")
        yield until(lambda: value(self.scrape(), "m2mgw_sms_sent_total") == 1, "the count")
        scraped = self.scrape()
        self.assertEqual(value(scraped, "m2mgw_sms_outbox_messages"), 0)
        self.assertEqual(value(scraped, "m2mgw_messages_out_total", command="REMOTE_CTRL"), 1)

        self.emulator.deliver_text(MSISDN, "hello")
        yield until(
            lambda: value(self.scrape(), "m2mgw_sms_received_total") == 1, "the received SMS"
        )

        self.emulator.set_fault("cms", 38)
        bearer.send(WAKEUP)
        yield until(
            lambda: value(self.scrape(), "m2mgw_sms_failed_total") == 1, "the refused message"
        )
        scraped = self.scrape()
        self.assertEqual(value(scraped, "m2mgw_sms_send_errors_total"), TUNING.max_refusals)
        self.assertEqual(value(scraped, "m2mgw_sms_sent_total"), 1)
        self.assertEqual(value(scraped, "m2mgw_sms_outbox_messages"), 0)
