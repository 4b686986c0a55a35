"""Per-meter authentication state: the uplink replay guard and the key version.

Table ``meter_auth`` (schema v3). A row exists only for a meter a frame of
which verified under its key (or that an operator asked to rotate), so junk
with made-up meter ids leaves nothing behind. ``up_counter`` is the last
accepted uplink counter: `accept_uplink` advances it with one conditional
UPDATE that succeeds only for a greater counter, so of two workers racing
with the same frame exactly one wins, and a replay stays refused after a
restart. A key rotation is the `KEY` lifecycle (`lifecycles.py`): queued by
the operator, sent (repeated) by the service, confirmed by the first uplink
under the new key. Every method is one transaction (re-entrant).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from headend.errors import InvalidData, StoreError
from headend.store.db import Db, Row, add_seq, chunks, marks, opt, seqs
from headend.store.lifecycles import KEY, KeyEvent, KeyState
from headend.store.registry import require
from protocol.auth import window_accept

_COLS = (
    "meter_id, up_counter, key_version, key_since_ms, state, pending_version, requested_ms, "
    "sent_ms, attempts, seqs"
)
#: key versions are u16 on the wire (key_set)
MAX_VERSION = 0xFFFF
_SIGN = 1 << 63  # up_window: an unsigned 64-bit map in a signed BIGINT
_CAS_TRIES = 100  # compare-and-set rounds lost to other workers before giving up


def _to_db(window: int) -> int:
    return window - (_SIGN << 1) if window & _SIGN else window


def _from_db(value: int) -> int:
    return value + (_SIGN << 1) if value < 0 else value


@dataclass(frozen=True, slots=True)
class AuthState:
    """A meter's authentication state (never key material: keys are derived)."""

    meter_id: int
    up_counter: int
    key_version: int
    key_since_ms: int
    state: KeyState
    pending_version: int | None
    requested_ms: int | None
    sent_ms: int | None
    attempts: int
    seqs: tuple[int, ...]


def _state(r: Row) -> AuthState:
    return AuthState(
        int(r[0]),
        int(r[1]),
        int(r[2]),
        int(r[3]),
        KeyState(r[4]),
        opt(r[5]),
        opt(r[6]),
        opt(r[7]),
        int(r[8]),
        seqs(r[9]),
    )


@dataclass(frozen=True, slots=True)
class AuthRow:
    """A meter's auth row as read once for a batch of its uplinks (`MeterAuth.get_many`):
    its state and its replay window (highest accepted counter, map); None: no row."""

    state: AuthState | None
    window: tuple[int, int] | None


class MeterAuth:
    """The meter_auth table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def get(self, meter_id: int) -> AuthState | None:
        """The meter's state; None when nothing of it ever verified (key version 0)."""
        with self.db.transaction(write=False):
            rows = self.db.query(f"SELECT {_COLS} FROM meter_auth WHERE meter_id = ?", (meter_id,))
        return _state(rows[0]) if rows else None

    def get_many(self, meter_ids: Iterable[int]) -> dict[int, AuthRow]:
        """Every meter of ``meter_ids`` -> its `AuthRow`, in one query per chunk (not per
        meter); a meter without a row maps to an empty one."""
        out = dict.fromkeys(meter_ids, AuthRow(None, None))
        with self.db.transaction(write=False):
            for chunk in chunks(sorted(out), self.db.chunk_rows):
                for r in self.db.query(
                    f"SELECT {_COLS}, up_window FROM meter_auth "
                    f"WHERE meter_id IN ({marks(len(chunk))})",
                    chunk,
                ):
                    out[int(r[0])] = AuthRow(_state(r), (int(r[1]), _from_db(int(r[10]))))
        return out

    def version(self, meter_id: int) -> int:
        """The key version both directions use now (0 until a rotation is confirmed)."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT key_version FROM meter_auth WHERE meter_id = ?", (meter_id,)
            )
        return int(rows[0][0]) if rows else 0

    def _insert(self, meter_id: int, counter: int, now_ms: int) -> bool:
        """A first row: ``counter`` accepted (the window holds it alone)."""
        rows = self.db.query(
            f"INSERT INTO meter_auth ({_COLS}, up_window) "
            "VALUES (?, ?, 0, ?, ?, NULL, NULL, NULL, 0, '', 1) "
            "ON CONFLICT (meter_id) DO NOTHING RETURNING meter_id",
            (meter_id, counter, now_ms, KEY.start.value),
        )
        return bool(rows)

    def window(self, meter_id: int) -> tuple[int, int] | None:
        """(highest accepted uplink counter, map of the window below it); None: no row."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT up_counter, up_window FROM meter_auth WHERE meter_id = ?", (meter_id,)
            )
        return (int(rows[0][0]), _from_db(int(rows[0][1]))) if rows else None

    def accept_uplink(
        self, meter_id: int, counter: int, now_ms: int, known: AuthRow | None = None
    ) -> bool:
        """Take uplink ``counter`` into the meter's replay window; False if it was seen
        already or is older than the window (a replay). Call it only for a verified frame.

        Read, then compare-and-set: an UPDATE that finds the row changed by another
        worker meanwhile changes nothing, and the window is read again. ``known``:
        the row as read earlier in this transaction (`get_many`), the first round's
        read (the compare-and-set still checks it).
        """
        cas = (
            "UPDATE meter_auth SET up_counter = ?, up_window = ? "
            "WHERE meter_id = ? AND up_counter = ? AND up_window = ?"
        )
        with self.db.transaction():
            for i in range(_CAS_TRIES):
                now = known.window if i == 0 and known is not None else self.window(meter_id)
                if now is None:
                    if self._insert(meter_id, counter, now_ms):
                        return True
                    continue  # another worker made the row meanwhile
                row = self.held_accept(meter_id, counter, now)
                if row is None:
                    return False
                mid, high, window, old_high, old_window = row
                if self.db.execute(cas, (high, window, mid, old_high, old_window)):
                    return True
        raise StoreError(
            f"meter {meter_id}: uplink window still contended after {_CAS_TRIES} tries"
        )

    def held_accept(
        self, meter_id: int, counter: int, window: tuple[int, int]
    ) -> tuple[int, int, int, int, int] | None:
        """The move of the meter's replay window ``(high, map)`` for ``counter``: its row
        (meter, new high, new map, old high, old map, as stored) for a compare-and-set
        (`accept_uplink` now, `accept_many` later in the transaction); None for a
        replay. Pure."""
        high, seen = window
        moved = window_accept(high, seen, counter)
        if moved is None:
            return None
        return (meter_id, moved[0], _to_db(moved[1]), high, _to_db(seen))

    def accept_many(self, rows: list[tuple[int, int, int, int, int]]) -> bool:
        """Write `held_accept`'s rows (at most one per meter), each a compare-and-set as
        in `accept_uplink`, in one statement per chunk. False if a row had changed
        meanwhile (then the caller's transaction must not commit what it decided)."""
        db = self.db
        changed = 0
        with db.transaction():
            for chunk in chunks(rows, db.chunk_rows):
                source, params = db.rows_source(("bigint",) * 5, chunk)
                # counted by RETURNING: Python's sqlite3 gives no rowcount for a WITH
                changed += len(
                    db.query(
                        f"WITH v (m, hi, win, old_hi, old_win) AS ({source}) "
                        "UPDATE meter_auth SET up_counter = v.hi, up_window = v.win FROM v "
                        "WHERE meter_auth.meter_id = v.m AND meter_auth.up_counter = v.old_hi "
                        "AND meter_auth.up_window = v.old_win RETURNING meter_auth.meter_id",
                        params,
                    )
                )
        return changed == len(rows)

    def rotate(self, meter_id: int, now_ms: int) -> int:
        """Queue a rotation to the next key version; returns it.

        Raises UnknownMeter, IllegalTransition (a rotation is under way), InvalidData
        (no version left).
        """
        with self.db.transaction():
            require(self.db, meter_id)
            self._insert(meter_id, 0, now_ms)
            version = self.version(meter_id) + 1
            if version > MAX_VERSION:
                raise InvalidData(f"meter {meter_id}: no key version left (u16)")
            KEY.fire(
                self.db,
                "meter_auth",
                {"meter_id": meter_id},
                KeyEvent.ROTATE,
                f"meter {meter_id}'s key",
                ", pending_version = ?, requested_ms = ?, sent_ms = NULL, attempts = 0, seqs = ''",
                (version, now_ms),
            )
        return version

    def due(self, now_ms: int, retry_ms: int, limit: int = 100) -> list[AuthState]:
        """Rotations whose key_set must go out now: queued ones, and sent ones unanswered
        for ``retry_ms``."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM meter_auth WHERE {KEY.sql_where(KeyEvent.SEND)} "
                "AND (sent_ms IS NULL OR sent_ms <= ?) ORDER BY meter_id LIMIT ?",
                (now_ms - retry_ms, limit),
            )
        return [_state(r) for r in rows]

    def rotating(self) -> list[AuthState]:
        """Every meter with a rotation queued or under way."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM meter_auth WHERE {KEY.sql_where(KeyEvent.SEND)} "
                "ORDER BY meter_id"
            )
        return [_state(r) for r in rows]

    def sent(self, meter_id: int, seq: int, now_ms: int) -> None:
        """Record one key_set sent. Raises IllegalTransition if no rotation is under way."""
        with self.db.transaction():
            rows = self.db.query("SELECT seqs FROM meter_auth WHERE meter_id = ?", (meter_id,))
            if not rows:
                raise InvalidData(f"no key state of meter {meter_id}")
            KEY.fire(
                self.db,
                "meter_auth",
                {"meter_id": meter_id},
                KeyEvent.SEND,
                f"meter {meter_id}'s key",
                ", sent_ms = ?, attempts = attempts + 1, seqs = ?",
                (now_ms, add_seq(rows[0][0], seq)),
            )

    def confirm(self, meter_id: int, now_ms: int) -> int:
        """An uplink verified under the pending key: it becomes the key. Returns its version."""
        with self.db.transaction():
            KEY.fire(
                self.db,
                "meter_auth",
                {"meter_id": meter_id},
                KeyEvent.CONFIRM,
                f"meter {meter_id}'s key",
                ", key_version = pending_version, pending_version = NULL, key_since_ms = ?",
                (now_ms,),
            )
            return self.version(meter_id)
