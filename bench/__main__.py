"""Benchmarks that print figures: `python -m bench NAME [options]`.

wire         wire size and codec speed per meter-day (protocol)
ingest       head-end ingest rate into the store
flash-wear   flash erase counts and years of service (firmware store)
firmware-heap  firmware heap on the MicroPython binary
heap-map     where the firmware's heap goes, per module (quick, no broker)
daily-check  the daily missing-data check over a whole population (D02)
download     optical download of 45 days from a virtual board over a paced link (M18, N06)
trouble      the daily trouble-report run (D06) over a large population
fleet-memory RAM and CPU of N fleet meters over D simulated days (hil/FLEET.md "Scale")
pg-storage   bytes per meter-day on PostgreSQL, indexes included (docs/SCALE.md)
ondemand     on-demand reads under a collection window's load, real time (N02): p50/p80/p99_s
export       rows per second and peak memory of a streamed export (D11), CSV / JSON / ESPI
live         the live path: mosquitto + `headend serve` + signed uplinks under load (N01)
live-core    the live path's database thread alone: Core.on_uplinks, no broker (N01)
api          the HTTP API: an interval query of one meter-month, req/s and p50/p99 ms
"""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "wire": "bench.wire",
    "ingest": "bench.ingest",
    "flash-wear": "bench.flash_wear",
    "firmware-heap": "bench.firmware_heap",
    "heap-map": "bench.heap_map",
    "download": "bench.download",
    "daily-check": "bench.daily_check",
    "trouble": "bench.trouble",
    "fleet-memory": "bench.fleet_memory",
    "pg-storage": "bench.pg_storage",
    "ondemand": "bench.ondemand",
    "export": "bench.export",
    "live": "bench.live",
    "live-core": "bench.livecore",
    "api": "bench.api",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        print(__doc__, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"unknown benchmark {argv[0]!r}; choose one of {', '.join(BENCHES)}",
                file=sys.stderr,
            )
            return 2
        return 0
    module = importlib.import_module(BENCHES[argv[0]])
    rc: int = module.main(argv[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
