"""Regenerate the golden vectors: `python -m protocol.vectors [--check]`.

With --check, exit 1 (and say which file) when the files on disk differ from
what the construct side generates now, i.e. the vectors are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protocol.vectors import DIR, dumps
from protocol.vectors.cases import blocks_rows, frame_rows, hdlc_rows, key_rows


def generate() -> dict[str, str]:
    """File name → file text, as the construct side produces them now."""
    return {
        "frames.jsonl": dumps(frame_rows()),
        "blocks.jsonl": dumps(blocks_rows()),
        "hdlc.jsonl": dumps(hdlc_rows()),
        "keys.jsonl": dumps(key_rows()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.vectors", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    parser.add_argument("--dir", type=Path, default=DIR, help="where the .jsonl files live")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = args.dir / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({text.count(chr(10))} vectors)")
    if stale:
        print(f"stale vectors: {', '.join(stale)}; run `make vectors`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
