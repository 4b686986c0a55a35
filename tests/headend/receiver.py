"""A local HTTP(S) receiver of exports POSTed by the service (D11, T03): keeps each
body with its content type, answers 503 to the first ``fail`` POSTs, then 200."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Receiver:
    """Plain HTTP, or HTTPS with ``tls`` = (certificate, key) files."""

    def __init__(self, fail: int, tls: tuple[Path, Path] | None = None) -> None:
        self.fail = fail
        self.bodies: list[tuple[str, bytes]] = []
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if recv.fail > 0:
                    recv.fail -= 1
                    self.send_response(503)
                else:
                    recv.bodies.append((self.headers["Content-Type"], body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            # before serving: each accepted connection is TLS
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/ami/in"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
