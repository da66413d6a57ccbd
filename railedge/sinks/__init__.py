"""Where events go: MQTT (durable, via the outbox) and JSON-lines files."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class EventSink(Protocol):
    """Receives finished event dicts from the pipeline thread."""

    def emit(self, event: dict) -> None:
        """Hand over one event; must not lose it once it returns."""
        ...

    def close(self) -> None:
        """Flush and release resources; later emits are errors."""
        ...
