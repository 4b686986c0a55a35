"""A virtual board's console: the MicroPython process on a pty, served on TCP.

`mpremote connect socket://127.0.0.1:PORT` (or any serial client) talks to the
board's REPL as it would over USB. The unix port exits where a board would
soft-reset (Ctrl-D in the raw REPL), so the console plays the board: it
starts a fresh interpreter, says "soft reboot", and puts it back in the raw
REPL, as mpremote expects. When the client leaves a bare REPL, the board is
reset into its firmware again. Power is the supervisor's: `power_cut()` kills
the process without warning; `power_up()` boots the firmware from flash.

With nobody on the console, an interpreter that exits (killed, crashed) or a
firmware that stops at the REPL (an uncaught exception) is a dead board:
`died` says what happened and what it printed last; it stays off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import signal
import subprocess
import tty
from collections.abc import Callable, Sequence
from pathlib import Path

from hil.supervise import child_options, exit_text, tail

RECENT_BYTES = 4096  # what a dead board's message quotes from its console


class Console:
    """Args:
    firmware: argv that boots the board (runs main.py, REPL after it stops), or a
        function asked at every boot for it (None: nothing to run, the bare REPL,
        as a board with an empty file system; `hil.board` boots from the board's fs).
    bare: argv of an interpreter with no firmware (a raw-REPL soft reset).
    cwd: the board's working directory (its file system for mpremote).
    env: environment of the process (MICROPYPATH etc.).
    log: where everything the board prints is appended (None: nowhere).
    """

    def __init__(
        self,
        firmware: Sequence[str] | Callable[[], Sequence[str] | None],
        bare: Sequence[str],
        cwd: Path,
        env: dict[str, str],
        log: Path | None = None,
        on_output: Callable[[bytes], None] | None = None,
    ) -> None:
        self.firmware = firmware if callable(firmware) else list(firmware)
        self.bare = list(bare)
        self.cwd = cwd
        self.env = env
        self.log = log
        self.on_output = on_output
        self.proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._client: asyncio.StreamWriter | None = None
        self._raw = False  # the client put the REPL in raw mode (Ctrl-A) and not left it
        self._bare_running = False
        self._in_firmware = False  # main.py runs: Ctrl-C must become SIGINT, as a UART IRQ does
        self._powered = False
        self.boots = 0
        self.server: asyncio.Server | None = None
        self.died: str | None = None
        self._recent = bytearray()

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("console not serving")
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = await asyncio.start_server(self._on_client, host, port)

    def _spawn(self, argv: Sequence[str]) -> None:
        master, slave = pty.openpty()
        tty.setraw(slave)  # bytes pass unchanged, as over a USB CDC port
        self.proc = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=self.cwd,
            env=self.env,
            close_fds=True,
            **child_options(),
        )
        os.close(slave)
        self._fd = master
        asyncio.get_running_loop().add_reader(master, self._on_pty)

    def _close_pty(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def power_up(self) -> None:
        """Boot the firmware (the board's power comes on)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self._close_pty()
        self.died = None
        self._powered = True
        self._bare_running = False
        self.boots += 1
        argv = self.firmware() if callable(self.firmware) else self.firmware
        self._in_firmware = argv is not None
        self._spawn(self.bare if argv is None else argv)

    def power_cut(self) -> None:
        """Kill the board without warning: no handler runs, RAM is lost."""
        self._powered = False
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_pty()

    def _on_pty(self) -> None:
        data = b""
        if self._fd is not None:
            try:
                data = os.read(self._fd, 4096)
            except OSError:
                data = b""
        if data:
            self._emit(data)
            if self._in_firmware and (b">>> " in data or b"raw REPL" in data):
                self._in_firmware = False  # the firmware stopped; the REPL reads stdin now
                if self._client is None and self._powered:
                    self.died = "its firmware stopped at the REPL" + self._said()
            return
        # EOF: the interpreter exited
        self._close_pty()
        rc = self.proc.wait() if self.proc is not None else None
        if not self._powered:
            return
        if self._client is None:
            self._powered = False
            self.died = f"its interpreter {exit_text(rc)} (not a power cut)" + self._said()
        elif self._raw:
            # a soft reset from the raw REPL: a board reboots and stays in raw REPL
            self._emit(b"soft reboot\r\n")
            self._bare_running = True
            self._spawn(self.bare)
            if self._fd is not None:
                os.write(self._fd, b"\r\x01")
        else:
            self.power_up()  # the client ended the REPL (Ctrl-D): a board reboots

    def _said(self) -> str:
        text = bytes(self._recent).decode(errors="replace")
        return f"; its console's last lines:{tail(text)}"

    def _emit(self, data: bytes) -> None:
        self._recent += data
        del self._recent[:-RECENT_BYTES]
        if self.log is not None:
            with open(self.log, "ab") as f:
                f.write(data)
        if self.on_output is not None:
            self.on_output(data)
        if self._client is not None:
            self._client.write(data)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._client is not None:  # one console, one user, like a USB port
            writer.close()
            return
        self._client = writer
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                for b in data:
                    if b == 0x01:
                        self._raw = True
                    elif b == 0x02:
                        self._raw = False
                    elif b == 0x03 and self._in_firmware and self.proc is not None:
                        # a board's UART driver turns Ctrl-C into KeyboardInterrupt; the
                        # unix port only hears SIGINT while running code
                        self.proc.send_signal(signal.SIGINT)
                if self._fd is not None:
                    os.write(self._fd, data)
        except ConnectionError:
            pass  # the client went away while output was being written to it
        finally:
            self._client = None
            self._raw = False
            writer.close()
            if self._powered and (self._bare_running or not self._in_firmware):
                # leaving the REPL: reset the board into its firmware
                self.power_cut()
                self.power_up()

    async def close(self) -> None:
        self.power_cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
