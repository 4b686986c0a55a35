"""One mpremote session with a board: hashes on the board, file writes, NVS, reset.

Through mpremote's Python API (its `SerialTransport`, which also opens
``socket://`` URLs: the virtual board's console), in one raw-REPL session, so
a board is interrupted once and reset once. Hashing runs ON the board
(MicroPython's ``hashlib.sha256``); a board without it is refused, never
hashed on the host from a copy.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from tools.flash.errors import FlashError

NVS_NAMESPACE = "ami"  # hal/esp32.py (firmware/README.md "Secrets")
BAUD = 115200

# prints {"name": sha256 hex or null (no such file)} for the names in N
_HASHES = """import hashlib,json,binascii
def _h(n):
 try:
  f=open(n,'rb')
 except OSError:
  return None
 d=hashlib.sha256();b=bytearray(512);m=memoryview(b)
 while 1:
  k=f.readinto(b)
  if not k:break
  d.update(m[:k])
 f.close()
 return binascii.hexlify(d.digest()).decode()
print(json.dumps({n:_h(n) for n in N}))
"""
# prints {"blob": sha256 hex or null} of the NVS blobs in N, as read back
_NVS_HASHES = """import esp32,hashlib,json,binascii
_s=esp32.NVS(%r)
def _h(n):
 b=bytearray(4096)
 try:
  k=_s.get_blob(n,b)
 except OSError:
  return None
 return binascii.hexlify(hashlib.sha256(b[:k]).digest()).decode()
print(json.dumps({n:_h(n) for n in N}))
"""


def _text(out: Any) -> str:
    return bytes(out).decode(errors="replace").strip()


class Session:
    """A board on `port` (a serial device or ``socket://host:port``), in its raw REPL.

    Every failure is a FlashError naming the port; secrets handed to `write_nvs`
    never appear in one.
    """

    def __init__(self, port: str) -> None:
        self.port = port
        self._dirs: set[str] = set()  # made (or there) in this session
        try:
            self.t = SerialTransport(port, baudrate=BAUD)
        except (TransportError, OSError) as e:
            raise FlashError(f"--port {port}: cannot open it ({e})") from None
        try:
            self.t.enter_raw_repl(soft_reset=True)
        except (TransportError, OSError) as e:
            self.t.close()
            raise FlashError(f"--port {port}: no MicroPython raw REPL there ({e})") from None
        self.platform = self.run("import sys\nprint(sys.platform)")

    def run(self, code: str, what: str = "") -> str:
        """Run `code` on the board; what it printed (FlashError if it raised)."""
        try:
            return _text(self.t.exec(code))
        except TransportExecError as e:
            last = (e.error_output.strip().splitlines() or ["?"])[-1]
            raise FlashError(f"{self.port}: {what or 'board code'} failed: {last}") from None
        except (TransportError, OSError) as e:
            raise FlashError(f"{self.port}: the link failed: {e}") from None

    def hashes(self, names: list[str]) -> dict[str, str | None]:
        """sha256 (hex) of each file on the board, computed there; None: not there."""
        if not self._has("hashlib"):
            raise FlashError(f"{self.port}: the board has no hashlib: cannot verify files there")
        out = self.run(f"N={names!r}\n" + _HASHES, "hashing files")
        return self._json(out)

    def _has(self, module: str) -> bool:
        return self.run(f"try:\n import {module}\n print(1)\nexcept ImportError:\n print(0)") == "1"

    def _json(self, out: str) -> dict[str, str | None]:
        try:
            got = json.loads(out.splitlines()[-1])
        except (ValueError, IndexError):
            raise FlashError(f"{self.port}: the board answered {out[:80]!r}") from None
        return {str(k): (None if v is None else str(v)) for k, v in got.items()}

    def write(self, name: str, data: bytes, progress: Callable[[int, int], None]) -> None:
        """Write the file `name` (its directories made), reporting bytes written."""
        parts = name.split("/")[:-1]
        for i in range(len(parts)):
            d = "/".join(parts[: i + 1])
            if d not in self._dirs:
                self.run(f"import os\ntry:\n os.mkdir({d!r})\nexcept OSError:\n pass", f"mkdir {d}")
                self._dirs.add(d)
        try:
            self.t.fs_writefile(name, data, chunk_size=512, progress_callback=progress)
        except (TransportError, OSError) as e:
            raise FlashError(f"{self.port}: writing {name} failed: {e}") from None

    def write_nvs(self, blobs: dict[str, bytes]) -> dict[str, str | None]:
        """Set the NVS blobs (namespace ami), commit, and return their hashes as read back."""
        if not self._has("esp32"):
            raise FlashError(f"{self.port}: no esp32 module: not an ESP32, cannot write NVS")
        code = [f"import esp32\n_s=esp32.NVS({NVS_NAMESPACE!r})"]
        code += [f"_s.set_blob({k!r},{v!r})" for k, v in blobs.items()]
        try:
            self.t.exec("\n".join(code + ["_s.commit()", "del _s"]))
        except TransportExecError as e:  # its text may quote the code: never show it
            kind = (e.error_output.strip().splitlines() or ["?"])[-1].split(":")[0]
            raise FlashError(f"{self.port}: writing NVS failed ({kind})") from None
        except (TransportError, OSError) as e:
            raise FlashError(f"{self.port}: the link failed writing NVS: {e}") from None
        return self._json(self.run(f"N={list(blobs)!r}\n" + _NVS_HASHES % NVS_NAMESPACE, "NVS"))

    def reset(self) -> None:
        """Reset the board into its firmware, and let go of the port.

        An ESP32 is hard-reset (``machine.reset()``). Elsewhere (the virtual
        board) Ctrl-D at the friendly REPL: a soft reset, which runs main.py.
        """
        try:
            if self.platform == "esp32":
                self.t.exec_raw_no_follow("import machine\nmachine.reset()")
            else:
                self.t.exit_raw_repl()
                self.t.serial.write(b"\x04")
        except (TransportError, OSError) as e:
            raise FlashError(f"{self.port}: reset failed: {e}") from None
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(TransportError, OSError):
            self.t.close()
