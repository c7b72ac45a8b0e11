"""The run folder: one folder per run, named by plan and start time."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from scopeloop.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["file_sha256", "new_run_folder", "write_json"]


def new_run_folder(root: Path, name: str, *, exact: Path | None = None) -> Path:
    """Create the folder of a new run.

    `exact` if given (it must be new or empty), else
    `<root>/<name>_<YYYYmmdd-HHMMSS>` (with a suffix if taken).
    """
    if exact is not None:
        if exact.exists() and any(exact.iterdir()):
            raise ConfigError(f"output folder {exact} exists and is not empty")
        exact.mkdir(parents=True, exist_ok=True)
        return exact
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        folder = root / (f"{name}_{stamp}" + (f"_{attempt}" if attempt else ""))
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise ConfigError(f"cannot create a run folder under {root}")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as indented JSON, atomically (temp file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (read in chunks: recordings can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
