"""`headend upload FILE`: a probe's download file into the store, marked manual (D12).

Checked before anything is stored: the meter is registered, a probe key was
issued to the file's operator for that meter at the file's key version, the
file MAC and every frame's MAC verify under that K_op (derived again from the
master key), and every section decodes for the meter's registration. Then
intervals, midnight registers and events go in with source ``manual_upload``
in ONE transaction (all or nothing); the store's merge rule makes a second
upload of the same file change nothing. One activity line per upload, also
for a refused one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from headend.api import Config, Headend
from headend.cli.common import OK, Failed, Sub, Usage, add_command, emit, now_ms, open_headend
from headend.errors import InvalidData
from headend.mdms import ingest, routing
from headend.store import Source
from headend.store.activity import Kind
from headend.store.probekeys import ProbeKeys
from protocol import download as dl
from protocol.auth import probe_key


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub, common, "upload", "store a probe's download file, marked as manual upload (D12)"
    )
    p.add_argument("file", type=Path, help="the file `python -m tools.probe download` wrote")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    path: Path = args.file
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise Usage(f"{path}: not a download file (not text)") from None
    try:
        doc = dl.parse(text)
    except dl.BadDownload as e:
        raise Usage(f"{path}: {e}") from None
    with open_headend(cfg) as he:
        return _upload(args, he, doc, path.name)


def _refuse(he: Headend, mid: int, at: int, name: str, why: str) -> Failed:
    he.ctx.activity.log(at, Kind.UPLOAD_REFUSED, f"{name}: {why}; nothing stored", mid)
    return Failed(f"{name} refused: {why}; nothing stored")


def _upload(args: argparse.Namespace, he: Headend, doc: dict[str, Any], name: str) -> int:
    ctx = he.ctx
    mid, op, version = doc["meter"], doc["operator"], doc["key_version"]
    at = now_ms()
    meter = he.meter(mid)  # UnknownMeter: a usage error
    if ProbeKeys(ctx.db).issued_ms(mid, op, version) is None:
        raise _refuse(
            he, mid, at, name, f"no probe key was issued to operator {op} for key version {version}"
        )
    k_op = probe_key(ctx.downlinks.key(mid, version), op)
    try:
        content = dl.verify(doc, k_op)
        secs = ingest.sections(meter, content.sections, Source.MANUAL_UPLOAD, at // 1000)
    except (dl.BadDownload, InvalidData) as e:
        raise _refuse(he, mid, at, name, str(e)) from None
    with ctx.db.transaction():
        res = ctx.readings.ingest(blocks=secs.blocks, midnights=secs.midnights)
        fresh = routing.store_events(ctx, mid, secs.events, at)
        n_iv = sum(b.block.count for b in secs.blocks)
        result = {
            "meter": mid,
            "operator": op,
            "downloaded_at": doc["downloaded_at"],
            "intervals": n_iv,
            "intervals_new": res.intervals_written,
            "registers": len(secs.midnights),
            "registers_new": res.midnights_written,
            "events": len(secs.events),
            "events_new": len(fresh),
        }
        ctx.activity.log(
            at,
            Kind.MANUAL_UPLOAD,
            f"{name} (operator {op}, downloaded {doc['downloaded_at']}, {doc['tool']}): "
            f"{n_iv} intervals ({res.intervals_written} new), {len(secs.midnights)} midnight "
            f"registers ({res.midnights_written} new), {len(secs.events)} events "
            f"({len(fresh)} new)",
            mid,
        )
    emit(
        args,
        result,
        lambda: (
            f"meter {mid}: {result['intervals_new']} new intervals (of {n_iv}), "
            f"{result['registers_new']} new midnight registers (of {len(secs.midnights)}), "
            f"{result['events_new']} new events (of {len(secs.events)}), stored as manual upload"
        ),
    )
    return OK
