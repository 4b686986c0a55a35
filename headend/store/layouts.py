"""Registrations that would change a registered meter's channel layout, held back.

Table ``pending_layout`` (schema v3). A `register` whose channels differ
from the registered ones is not applied (stored data would no longer match
its channels): it waits here, one per meter (the newest), until an operator
runs ``headend meters accept-layout METER``. Every method is one transaction.
"""

from __future__ import annotations

import json
from typing import Any

from headend.store.db import Db


class Layouts:
    """The pending_layout table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def hold(self, meter_id: int, register: dict[str, Any], transport: str, now_ms: int) -> bool:
        """Keep a register body; True if it is new (not the one held already)."""
        text = json.dumps(register, sort_keys=True, separators=(",", ":"))
        with self.db.transaction():
            rows = self.db.query(
                "SELECT register FROM pending_layout WHERE meter_id = ?", (meter_id,)
            )
            if rows and rows[0][0] == text:
                return False
            self.db.execute(
                "INSERT INTO pending_layout (meter_id, register, transport, received_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET "
                "register = excluded.register, transport = excluded.transport, "
                "received_ms = excluded.received_ms",
                (meter_id, text, transport, now_ms),
            )
        return True

    def get(self, meter_id: int) -> tuple[dict[str, Any], str | None, int] | None:
        """(register body, transport, received ms) held for a meter, or None."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT register, transport, received_ms FROM pending_layout WHERE meter_id = ?",
                (meter_id,),
            )
        if not rows:
            return None
        body: dict[str, Any] = json.loads(rows[0][0])
        return body, rows[0][1], int(rows[0][2])

    def drop(self, meter_id: int) -> bool:
        with self.db.transaction():
            return bool(
                self.db.execute("DELETE FROM pending_layout WHERE meter_id = ?", (meter_id,))
            )
