"""report.png from a run folder's tables (hand-made, see test_evaluate_tables)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from test_evaluate_tables import frame_at, made_up_frames, make_run

from scopeloop.evaluate import RunFolderError
from scopeloop.report import write_report

if TYPE_CHECKING:
    from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("truth", [True, False], ids=["ground-truth", "no-truth"])
def test_report_png_is_written_into_the_run_folder(tmp_path: Path, truth: bool) -> None:
    rows = made_up_frames()
    detected = [{"frame_index": frame_at(rows, 1, 8.0), "position": 1, "y": 4, "x": 5}]
    folder = make_run(tmp_path / "run", truth=truth, detected=detected)

    path = write_report(folder)

    assert path == folder / "report.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = png_size(data)
    assert 600 <= width <= 2000
    assert 300 <= height <= 1500
    assert len(data) > 10_000  # something was drawn


def test_a_folder_without_frames_gets_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="not a run folder"):
        write_report(tmp_path)
