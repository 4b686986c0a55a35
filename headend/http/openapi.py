"""The API's OpenAPI spec as checked in at docs/openapi.json:
``python -m headend.http.openapi > docs/openapi.json`` (or ``make openapi``)."""

from __future__ import annotations

import json
from typing import Any

from headend.config import Config
from headend.http.app import build


def spec() -> dict[str, Any]:
    """The spec the app serves at /openapi.json (no database is opened)."""
    return build(Config(database="sqlite:///unused")).openapi()


def text() -> str:
    return json.dumps(spec(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(text(), end="")
