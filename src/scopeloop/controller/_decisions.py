"""`decisions.jsonl`: every decision of the loop, one JSON object per line."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from ._policy import Decision

__all__ = ["DecisionLog"]


class DecisionLog:
    """Appends decisions to a JSON-lines file as they are taken. Thread-safe.

    Each line: ``time_s`` (since the run started), ``position`` (null for the
    whole run), ``action`` (fast, hold, slow, fallback, resume, reduced,
    refused), ``reason``, ``mode``, ``trigger`` (the result that triggered it:
    frame index, nucleus and score, or the division) and ``latency_ms`` (from
    the triggering frame's exposure to the decision).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self._lock = threading.Lock()
        self._file = path.open("a", buffering=1)

    def write(self, decision: Decision) -> None:
        """Append one decision (flushed at once)."""
        record = asdict(decision)
        record["time_s"] = round(decision.time_s, 4)
        if decision.latency_ms is not None:
            record["latency_ms"] = round(decision.latency_ms, 2)
        line = json.dumps(record)
        with self._lock:
            self.counts[decision.action] += 1
            if decision.latency_ms is not None:
                self.latencies_ms.append(decision.latency_ms)
            if not self._file.closed:
                self._file.write(line + "\n")

    def close(self) -> None:
        """Close the file (later decisions are counted, not written)."""
        with self._lock:
            self._file.close()
