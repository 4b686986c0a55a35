"""The optical download file (M18, D12): what the probe writes and the head-end checks.

One JSON object, self-describing::

    {"format": "ami-download/1", "meter": id, "operator": op, "key_version": v,
     "downloaded_at": ISO, "tool": "ami-probe <version>",
     "frames": [hex of each download_data frame as received],
     "mac": hex HMAC-SHA256(K_op, canonical JSON of everything but mac)}

Canonical JSON = keys sorted, no spaces, ASCII. Every frame keeps its own MAC
(K_op and the meter's uplink counter), so the file proves its content twice:
the whole under the probe's key, each frame under the meter's. `verify` checks
both, the part numbering and the meter id; `summary` counts what it holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from protocol.auth import verify_frame
from protocol.errors import ProtocolError
from protocol.frame import decode

FORMAT = "ami-download/1"
_FIELDS = ("format", "meter", "operator", "key_version", "downloaded_at", "tool", "frames")


class BadDownload(ProtocolError):
    """A download file that is not one, is incomplete, or does not verify."""


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes the file MAC covers: every field but ``mac``, canonical JSON."""
    body = {k: v for k, v in doc.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def file_mac(k_op: bytes, doc: dict[str, Any]) -> str:
    return hmac.new(k_op, canonical(doc), hashlib.sha256).hexdigest()


def build(
    *,
    meter: int,
    operator: int,
    key_version: int,
    downloaded_at: str,
    tool: str,
    frames: list[bytes],
    k_op: bytes,
) -> dict[str, Any]:
    """The file's object, MAC included."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "meter": meter,
        "operator": operator,
        "key_version": key_version,
        "downloaded_at": downloaded_at,
        "tool": tool,
        "frames": [f.hex() for f in frames],
    }
    doc["mac"] = file_mac(k_op, doc)
    return doc


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"


def parse(text: str) -> dict[str, Any]:
    """The file's object with its fields checked for type (not yet verified). BadDownload."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise BadDownload(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadDownload(
            "not a download file",
            FORMAT,
            str(doc.get("format") if isinstance(doc, dict) else type(doc).__name__),
        )
    missing = [k for k in (*_FIELDS, "mac") if k not in doc]
    if missing:
        raise BadDownload("missing fields", ", ".join(missing), "absent")
    for k in ("meter", "operator", "key_version"):
        if type(doc[k]) is not int or doc[k] < 0:
            raise BadDownload(f"field {k}", "an int >= 0", doc[k])
    if not isinstance(doc["frames"], list) or not all(isinstance(f, str) for f in doc["frames"]):
        raise BadDownload("field frames", "a list of hex strings", type(doc["frames"]).__name__)
    return dict(doc)


@dataclass(frozen=True)
class Content:
    """A verified file's decoded frames (canonical fields), in part order."""

    doc: dict[str, Any]
    frames: list[dict[str, Any]]

    @property
    def sections(self) -> list[dict[str, Any]]:
        return [s for f in self.frames for s in f["body"]["sections"]]


def decode_frames(doc: dict[str, Any]) -> list[tuple[bytes, dict[str, Any]]]:
    """(raw, fields) of every frame, checked for type, meter id and part numbering."""
    out = []
    for n, h in enumerate(doc["frames"]):
        try:
            raw = bytes.fromhex(h)
            fields = decode(raw)
        except ValueError:
            raise BadDownload(f"frame {n}", "hex", h[:20]) from None
        except ProtocolError as e:
            raise BadDownload(f"frame {n} does not decode: {e}") from None
        if fields["type"] != "download_data":
            raise BadDownload(f"frame {n} type", "download_data", fields["type"])
        if fields["meter_id"] != doc["meter"]:
            raise BadDownload(f"frame {n} meter", doc["meter"], fields["meter_id"])
        out.append((raw, fields))
    if not out:
        raise BadDownload("no frames", ">= 1", 0)
    parts = out[0][1]["body"]["parts"]
    got = [f["body"]["part"] for _, f in out]
    if got != list(range(parts)) or any(f["body"]["parts"] != parts for _, f in out):
        raise BadDownload("parts", f"0..{parts - 1} of {parts}, in order", got)
    return out


def verify(doc: dict[str, Any], k_op: bytes) -> Content:
    """Check the file MAC, then every frame's MAC and counter order. BadDownload."""
    if not hmac.compare_digest(file_mac(k_op, doc), str(doc["mac"])):
        raise BadDownload("file MAC does not verify under the operator's probe key")
    frames = decode_frames(doc)
    last = 0
    for n, (raw, _) in enumerate(frames):
        try:
            last = verify_frame(raw, k_op, last if n else None)
        except ProtocolError as e:
            raise BadDownload(f"frame {n}: {e}") from None
    return Content(doc, [f for _, f in frames])


def summary(content: Content) -> dict[str, int]:
    """Counts of what the file holds: intervals, registers, midnight sets, events..."""
    n = {"frames": len(content.frames), "intervals": 0, "registers": 0, "midnight": 0, "events": 0}
    for s in content.sections:
        tag, body = s["tag"], s["body"]
        if tag == "intervals":
            n["intervals"] += len(body["flags"])
        elif tag == "registers":
            n["registers"] += len(body["values"])
        elif tag == "midnight":
            n["midnight"] += 1
        elif tag == "events":
            n["events"] += len(body)
    return n
