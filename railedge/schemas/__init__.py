"""JSON Schemas (draft 2020-12) of the MQTT payloads, shipped with the package.

Each payload names its schema in a `schema` field ("railedge.event/1", ...); the major version
changes only when a field is removed or changes meaning. New optional fields do not change it."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

EVENT_SCHEMA = "railedge.event/1"
STATS_SCHEMA = "railedge.stats/1"
STATUS_SCHEMA = "railedge.status/1"

NAMES = ("event", "stats", "status")


@lru_cache(maxsize=None)
def _load(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema for `name`: event | stats | status (a trailing '.json' is accepted).
    Returns a fresh dict each call."""
    key = name[:-5] if name.endswith(".json") else name
    if key not in NAMES:
        raise ValueError(f"unknown schema {name!r}; expected one of {', '.join(NAMES)}")
    return json.loads(_load(key))
