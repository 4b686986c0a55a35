"""Optical probe keys issued to operators (table ``probe_key``, schema v4).

`headend keys probe-key` records each issue here (never the key: K_op is
derived from the meter's key whenever it is needed); `headend upload` takes a
download file only from an operator holding a key for that meter at that key
version (D12). Every method is one transaction (re-entrant).
"""

from __future__ import annotations

from headend.store.db import Db
from headend.store.registry import require


class ProbeKeys:
    """The probe_key table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def issue(self, meter_id: int, operator: int, key_version: int, now_ms: int) -> bool:
        """Record an issue; False when that key was issued before (the row stays).

        Raises UnknownMeter.
        """
        with self.db.transaction():
            require(self.db, meter_id)
            rows = self.db.query(
                "INSERT INTO probe_key (meter_id, operator, key_version, issued_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING meter_id",
                (meter_id, operator, key_version, now_ms),
            )
        return bool(rows)

    def issued_ms(self, meter_id: int, operator: int, key_version: int) -> int | None:
        """When that key was first issued; None if never."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT issued_ms FROM probe_key "
                "WHERE meter_id = ? AND operator = ? AND key_version = ?",
                (meter_id, operator, key_version),
            )
        return int(rows[0][0]) if rows else None
