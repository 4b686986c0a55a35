"""Serving the API with uvicorn: HTTPS with the `headend pki` server certificate by
default, plain HTTP only with ``api_insecure`` (warned as ``insecure:``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from headend.config import Config
from headend.errors import ConfigError
from headend.http.app import build
from headend.pki import Pki

log = logging.getLogger("headend.http")


def listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ConfigError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"api_listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def tls_options(config: Config) -> dict[str, Any]:
    """uvicorn's TLS options for ``config`` ({} when insecure)."""
    if config.api_insecure:
        log.warning("insecure: the HTTP API is served over plain HTTP, no TLS; a lab only")
        return {}
    pki = Pki(Path(config.api_pki_dir))
    for f in (pki.server_cert, pki.server_key):
        if not f.is_file():
            raise ConfigError(
                f"api_pki_dir: no {f} (run `headend pki init {config.api_pki_dir}`, "
                "or set api_insecure for plain HTTP)"
            )
    return {"ssl_certfile": str(pki.server_cert), "ssl_keyfile": str(pki.server_key)}


def server(
    config: Config, listen_at: str, now_ms: Callable[[], int] | None = None
) -> uvicorn.Server:
    """A uvicorn server of the API (not started); ``now_ms``: the service's clock when
    served beside it (a simulated one runs quotas and the pages' "today" too)."""
    host, port = listen(listen_at)
    opts = tls_options(config)
    app = build(config) if now_ms is None else build(config, now_ms=now_ms)
    return uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, **opts)
    )
