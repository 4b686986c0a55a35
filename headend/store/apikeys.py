"""Operator API keys and browser sessions (schema v10), stored as sha256 digests only:
the key itself is shown once, at creation, and never kept."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from headend.errors import InvalidData
from headend.store.db import Db


def new_token() -> str:
    """A fresh random secret (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What is stored of a secret: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    created_ms: int
    revoked_ms: int | None


class ApiKeys:
    """api_key and api_session over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def add(self, name: str, now_ms: int) -> str:
        """A new key named ``name``; returns the key (the only time it is known)."""
        if not name or not name.isprintable() or len(name) > 64:
            raise InvalidData("api key name: expected 1-64 printable characters")
        key = new_token()
        with self.db.transaction():
            if self.db.query("SELECT 1 FROM api_key WHERE name = ?", (name,)):
                raise InvalidData(f"api key {name!r} exists already")
            self.db.execute(
                "INSERT INTO api_key (name, key_hash, created_ms) VALUES (?, ?, ?)",
                (name, digest(key), now_ms),
            )
        return key

    def revoke(self, name: str, now_ms: int) -> None:
        with self.db.transaction():
            n = self.db.execute(
                "UPDATE api_key SET revoked_ms = ? WHERE name = ? AND revoked_ms IS NULL",
                (now_ms, name),
            )
            self.db.execute("DELETE FROM api_session WHERE key_name = ?", (name,))
        if not n:
            raise InvalidData(f"no active api key {name!r}")

    def rows(self) -> list[ApiKey]:
        with self.db.transaction(write=False):
            rows = self.db.query("SELECT name, created_ms, revoked_ms FROM api_key ORDER BY name")
        return [ApiKey(str(n), int(c), None if r is None else int(r)) for n, c, r in rows]

    def check(self, key: str) -> str | None:
        """The name of the active key ``key``, or None."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT name FROM api_key WHERE key_hash = ? AND revoked_ms IS NULL",
                (digest(key),),
            )
        return str(rows[0][0]) if rows else None

    def open_session(self, key_name: str, now_ms: int, ttl_ms: int) -> str:
        """A session token for a browser logged in with key ``key_name``."""
        token = new_token()
        with self.db.transaction():
            self.db.execute("DELETE FROM api_session WHERE expires_ms < ?", (now_ms,))
            self.db.execute(
                "INSERT INTO api_session (token_hash, key_name, expires_ms) VALUES (?, ?, ?)",
                (digest(token), key_name, now_ms + ttl_ms),
            )
        return token

    def session(self, token: str, now_ms: int) -> str | None:
        """The key name behind a live session token, or None."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT s.key_name FROM api_session s JOIN api_key k ON k.name = s.key_name "
                "WHERE s.token_hash = ? AND s.expires_ms >= ? AND k.revoked_ms IS NULL",
                (digest(token), now_ms),
            )
        return str(rows[0][0]) if rows else None
