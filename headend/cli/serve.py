"""`headend serve`: run the service (MQTT and serial links, timers) until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket

import uvicorn

from headend import masterkey
from headend.api import Config, HeadendError, Service
from headend.cli.common import OK, Sub, Usage, add_command, redact, sqlite_path
from headend.http.server import listen, server
from headend.redact import install
from headend.service import tune_gc


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "serve", "run the service: MQTT and serial links, reads, events")
    p.add_argument(
        "--serial",
        action="append",
        metavar="URL",
        help="a serial line (a device path like /dev/ttyUSB0, or socket://host:port); repeatable",
    )
    p.add_argument("--worker", help="this worker's MQTT client id (unique per process)")
    p.add_argument("--speed", type=float, help="simulated-clock speed factor (1 = real time)")
    p.add_argument("--clock-start", type=int, metavar="UTC_S", help="simulated clock start (UTC s)")
    p.add_argument(
        "--dev",
        action="store_true",
        help="allow the all-zero development master key (a lab only, never in the field)",
    )
    p.add_argument(
        "--clock-anchor",
        type=float,
        metavar="EPOCH_S",
        help="wall-clock instant at which the clock reads --clock-start (default: at start)",
    )
    p.set_defaults(
        run=run, overrides_from=("serial", "worker", "speed", "clock_start", "clock_anchor")
    )


def _logging(verbose: bool) -> None:
    """INFO: registrations, job outcomes, link trouble; -v: also every frame and job step."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install(logging.getLogger())  # no secret in any line, whoever logs it
    logging.getLogger().setLevel(logging.WARNING)  # libraries: only what goes wrong
    logging.getLogger("headend").setLevel(logging.DEBUG if verbose else logging.INFO)


class ApiDown(HeadendError):
    """The HTTP API could not serve (its port taken, its certificate unreadable)."""


def _bind(listen_at: str) -> socket.socket:
    """The API's listening socket, bound before the service starts: a port taken stops
    serve at once with one line (uvicorn would exit from inside its task)."""
    host, port = listen(listen_at)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ApiDown(f"the HTTP API cannot listen on {listen_at}: {e.strerror or e}") from None
    return sock


async def _api(api: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await api._serve(sockets=[sock])  # noqa: SLF001
    except SystemExit:  # uvicorn's way of failing at start
        raise ApiDown("it could not start (see the error above)") from None


def run(args: argparse.Namespace, cfg: Config) -> int:
    dev = masterkey.is_dev(masterkey.load(cfg))  # a key file open to others stops here
    if dev and not args.dev:
        raise Usage(
            "refusing the development master key (all zeros): make one with `headend keys "
            "init PATH` and set `master_key_file` in the config file's [headend] table "
            "(or AMI_MASTER_KEY_FILE), or pass --dev for a lab"
        )
    path = sqlite_path(cfg.database)
    if path is not None:  # the default lives in ./var/
        path.parent.mkdir(parents=True, exist_ok=True)
    _logging(args.verbose)
    lines = ", ".join(s["url"] for s in cfg.serial) or "none"
    logging.getLogger("headend").info(
        "serving: broker %s, database %s, serial %s, speed %g, real-time feed %s%s",
        redact(cfg.broker),
        redact(cfg.database),
        lines,
        cfg.speed,
        cfg.realtime_topic if cfg.realtime else "off",
        " (development master key)" if dev else "",
    )

    async def serve() -> None:
        task = asyncio.current_task()
        if task is not None:  # SIGTERM/SIGINT: stop cleanly (close the store, the links)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
        svc = Service(cfg)
        api = server(cfg, cfg.api_listen, svc.clock.now_ms) if cfg.api_listen else None
        sock = _bind(cfg.api_listen) if api else None
        tune_gc()  # built: what exists now stays
        service = asyncio.create_task(svc.run())
        # not uvicorn's public serve(): it would take over SIGINT/SIGTERM, handled above
        api_task = asyncio.create_task(_api(api, sock)) if api and sock else None
        try:
            await asyncio.wait(
                {service, *([api_task] if api_task else [])},
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            pass  # SIGTERM/SIGINT: stop both
        else:
            if service.done():
                service.result()  # the service's own error, as without the API
            elif api_task is not None:  # the API ended first: do not serve half a head-end
                err = api_task.exception()
                raise ApiDown(f"the HTTP API on {cfg.api_listen} stopped: {err or 'it ended'}")
        finally:
            service.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service
            if api is not None and api_task is not None:
                api.should_exit = True
                with contextlib.suppress(asyncio.CancelledError, ApiDown):
                    await api_task

    asyncio.run(serve())
    return OK
