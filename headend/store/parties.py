"""Third parties of the portal (T01-T06, schema v10): each one's key (a digest), meter
set and limits, its on-demand use (rate limit and daily quota), and the log of every
portal request it made. State is read from the store on each request, so a curtail or a
revocation takes effect on the party's next request (T05)."""

from __future__ import annotations

from dataclasses import dataclass

from headend.brokerconf import parse_meters
from headend.errors import InvalidData
from headend.store.apikeys import digest, new_token
from headend.store.db import Db

DAY_MS = 86_400_000
#: a party's periodic exports are routine exports named ``portal:PARTY:NAME``
PERIODIC_PREFIX = "portal:"


def periodic_party(export_name: str) -> str | None:
    """The party a routine export belongs to (None: not a portal periodic export)."""
    if not export_name.startswith(PERIODIC_PREFIX):
        return None
    # the export's own name has no ':' (PeriodicIn), a party's name may
    who, sep, _ = export_name.removeprefix(PERIODIC_PREFIX).rpartition(":")
    return who if sep and who else None


@dataclass(frozen=True)
class Party:
    name: str
    meters: frozenset[int]
    meters_text: str
    rate_per_min: int
    daily_quota: int
    revoked_ms: int | None


@dataclass(frozen=True)
class LogRow:
    at_ms: int
    party: str
    method: str
    target: str
    status: int
    bytes: int
    duration_ms: int
    request_id: str
    sent_rows: int | None


def _limit(name: str, v: int) -> int:
    if not 0 < v <= 1_000_000:
        raise InvalidData(f"{name}: expected 1..1000000, got {v}")
    return v


def _party(row: tuple[object, ...]) -> Party:
    name, meters, rate, quota, revoked = row
    text = str(meters)
    return Party(
        str(name),
        frozenset(parse_meters(text)),
        text,
        int(str(rate)),
        int(str(quota)),
        None if revoked is None else int(str(revoked)),
    )


_COLS = "name, meters, rate_per_min, daily_quota, revoked_ms"


class Parties:
    """party, party_use and portal_log over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def add(self, name: str, meters: str, rate_per_min: int, daily_quota: int, now_ms: int) -> str:
        """A new party; returns its key (the only time it is known)."""
        if not name or not name.isprintable() or len(name) > 64:
            raise InvalidData("party name: expected 1-64 printable characters")
        parse_meters(meters)  # ConfigError (a HeadendError) on a bad set
        key = new_token()
        with self.db.transaction():
            if self.db.query("SELECT 1 FROM party WHERE name = ?", (name,)):
                raise InvalidData(f"party {name!r} exists already")
            self.db.execute(
                "INSERT INTO party (name, key_hash, meters, rate_per_min, daily_quota, "
                "created_ms, version) VALUES (?, ?, ?, ?, ?, ?, 1)",
                (
                    name,
                    digest(key),
                    meters,
                    _limit("rate_per_min", rate_per_min),
                    _limit("daily_quota", daily_quota),
                    now_ms,
                ),
            )
        return key

    def _update(self, name: str, sets: str, params: tuple[object, ...]) -> None:
        with self.db.transaction():
            n = self.db.execute(
                f"UPDATE party SET {sets}, version = version + 1 WHERE name = ?",
                (*params, name),
            )
        if not n:
            raise InvalidData(f"no party {name!r}")

    def grant(self, name: str, meters: str) -> None:
        """Replace the party's meter set (its periodic exports' too)."""
        parse_meters(meters)
        with self.db.transaction():
            self._update(name, "meters = ?", (meters,))
            self._periodic(name, "meters = ?", (meters,))

    def revoke(self, name: str, now_ms: int) -> None:
        """Refuse the party from its next request; its periodic exports stop."""
        with self.db.transaction():
            self._update(name, "revoked_ms = ?", (now_ms,))
            self._periodic(name, "enabled = 0", ())

    def _periodic(self, name: str, sets: str, params: tuple[object, ...]) -> None:
        prefix = f"{PERIODIC_PREFIX}{name}:"
        self.db.execute(
            f"UPDATE export_schedule SET {sets} WHERE substr(name, 1, ?) = ?",
            (*params, len(prefix), prefix),
        )

    def curtail(self, name: str, rate_per_min: int | None, daily_quota: int | None) -> None:
        party = self.get(name)
        self._update(
            name,
            "rate_per_min = ?, daily_quota = ?",
            (
                _limit("rate_per_min", rate_per_min or party.rate_per_min),
                _limit("daily_quota", daily_quota or party.daily_quota),
            ),
        )

    def get(self, name: str) -> Party:
        with self.db.transaction(write=False):
            rows = self.db.query(f"SELECT {_COLS} FROM party WHERE name = ?", (name,))
        if not rows:
            raise InvalidData(f"no party {name!r}")
        return _party(tuple(rows[0]))

    def rows(self) -> list[Party]:
        with self.db.transaction(write=False):
            rows = self.db.query(f"SELECT {_COLS} FROM party ORDER BY name")
        return [_party(tuple(r)) for r in rows]

    def by_key(self, key: str) -> Party | None:
        """The active party holding ``key``, or None."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM party WHERE key_hash = ? AND revoked_ms IS NULL",
                (digest(key),),
            )
        return _party(tuple(rows[0])) if rows else None

    # -- on-demand use (T05) -----------------------------------------------------------------

    def use(self, name: str, now_ms: int) -> tuple[int, int]:
        """(requests in the last minute, requests since UTC midnight) of the party."""
        with self.db.transaction(write=False):
            minute, today = (
                int(
                    self.db.query(
                        "SELECT COUNT(*) FROM party_use WHERE party = ? AND at_ms >= ?",
                        (name, since),
                    )[0][0]
                )
                for since in (now_ms - 59_999, now_ms - now_ms % DAY_MS)
            )
        return minute, today

    def take(self, party: Party, now_ms: int) -> int:
        """Count one on-demand request; 0 if allowed, else seconds until one would be."""
        day0 = now_ms - now_ms % DAY_MS
        with self.db.transaction():
            minute = [
                int(r[0])
                for r in self.db.query(
                    "SELECT at_ms FROM party_use WHERE party = ? AND at_ms > ? ORDER BY at_ms",
                    (party.name, now_ms - 60_000),
                )
            ]
            (today,) = self.db.query(
                "SELECT COUNT(*) FROM party_use WHERE party = ? AND at_ms >= ?",
                (party.name, day0),
            )[0]
            if int(today) >= party.daily_quota:
                return max(1, -(-(day0 + DAY_MS - now_ms) // 1000))
            if len(minute) >= party.rate_per_min:
                oldest = minute[len(minute) - party.rate_per_min]
                return max(1, -(-(oldest + 60_000 - now_ms) // 1000))
            self.db.execute(
                "INSERT INTO party_use (party, at_ms) VALUES (?, ?)", (party.name, now_ms)
            )
            # older use counts for nothing any more
            self.db.execute(
                "DELETE FROM party_use WHERE party = ? AND at_ms < ?",
                (party.name, min(day0, now_ms - 60_000)),
            )
        return 0

    # -- the request log (T04, T06) ----------------------------------------------------------

    def log(self, row: LogRow) -> None:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO portal_log (at_ms, party, method, target, status, bytes, "
                "duration_ms, request_id, sent_rows) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.at_ms,
                    row.party,
                    row.method,
                    row.target,
                    row.status,
                    row.bytes,
                    row.duration_ms,
                    row.request_id,
                    row.sent_rows,
                ),
            )

    def log_rows(self, party: str | None = None, limit: int = 1000) -> list[LogRow]:
        where, params = ("WHERE party = ?", (party,)) if party else ("", ())
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT at_ms, party, method, target, status, bytes, duration_ms, request_id, "
                f"sent_rows FROM portal_log {where} ORDER BY log_id LIMIT {int(limit)}",
                params,
            )
        return [
            LogRow(
                int(a),
                str(p),
                str(m),
                str(t),
                int(s),
                int(b),
                int(d),
                str(r),
                None if n is None else int(n),
            )
            for a, p, m, t, s, b, d, r, n in rows
        ]
