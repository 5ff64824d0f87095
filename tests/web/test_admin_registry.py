"""``GET /registry``: the admin API names the registry it serves (issue #8)."""

from __future__ import annotations

import sqlite3

from twisted.trial import unittest

from tests.web import start_gateway


class RegistryRouteTests(unittest.TestCase):
    async def test_reports_backend_path_and_the_stored_instance_id(self) -> None:
        running = await start_gateway(self)
        status, body, _ = await running.api("GET", "/registry")
        self.assertEqual(status, 200, body)
        database = running.root / "m2mgw.db"
        [(stored,)] = sqlite3.connect(database).execute(
            "SELECT value FROM registry_meta WHERE name = 'instance_id'"
        ).fetchall()
        self.assertEqual(body, {"backend": "sqlite", "path": str(database), "instance_id": stored})
        status, body, _ = await running.api("POST", "/registry", {})
        self.assertEqual(status, 405)
