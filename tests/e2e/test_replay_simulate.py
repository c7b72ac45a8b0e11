"""`scopeloop simulate` on the replay rig: a recording acquired offline.

Most cases replay a small TYX stack written in `tmp_path`; one reads the
GOWT1 recording where it is (`../shared/data/real/`), skipping when absent.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
from run_files import read_raw
from typer.testing import CliRunner

from scopeloop.cli import app

if TYPE_CHECKING:
    from typer.testing import Result

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "hardware_configs" / "replay.cfg"
GOWT1 = ROOT.parent / "shared" / "data" / "real" / "gowt1-01" / "images.tif"
FAST = ["--speedup", "1000000"]


def simulate(*args: str) -> Result:
    return CliRunner().invoke(app, ["simulate", "--config", str(CONFIG), *FAST, *args])


def replay(recording: Path, out: Path, *args: str) -> Result:
    """`simulate` on replay.cfg of `recording` into `out`, with more options."""
    return simulate("--recording", str(recording), *args, "--out", str(out))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A small 16-bit TYX recording: 6 frames of 32x48, bright enough to thin."""
    rng = np.random.default_rng(7)
    frames = rng.integers(100, 4000, size=(6, 32, 48), dtype=np.uint16)
    path = tmp_path_factory.mktemp("recording") / "stack.tif"
    tifffile.imwrite(path, frames)
    return path, frames


def message(result: Result) -> str:
    return " ".join(result.output.split())


@pytest.mark.skipif(not GOWT1.is_file(), reason=f"{GOWT1} not found")
def test_gowt1_replayed_at_recorded_power_is_bit_for_bit(tmp_path: Path) -> None:
    out = tmp_path / "run"

    result = replay(GOWT1, out, "--frames", "3")

    assert result.exit_code == 0, result.output
    raw = read_raw(out, 0)
    recorded = tifffile.imread(GOWT1, key=range(3))
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, recorded)
    record = json.loads((out / "simulation.json").read_text())
    assert record["recording"]["path"] == str(GOWT1.resolve())
    assert record["recording"]["frames"] == [92]
    assert len(record["recording"]["sha256"]) == 64
    assert record["replay"]["ReplayHub"]["properties"]["Recording"] == str(GOWT1)
    assert record["light"]["thinning"] is False
    assert record["summary"]["ground_truth"] is None
    assert not (out / "ground_truth").exists()


def test_replay_follows_the_clock_and_records_what_it_served(
    tmp_path: Path, stack: tuple[Path, np.ndarray]
) -> None:
    path, frames = stack
    out = tmp_path / "run"

    # The recording's interval is 1 s (none in the file): every 2 s serves
    # frames 0, 2, 4.
    result = replay(path, out, "--frames", "3", "--interval", "2")

    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_raw(out, 0), frames[[0, 2, 4]])
    with (out / "replay_frames.csv").open(newline="") as f:
        served = [int(r["recorded_frame"]) for r in csv.DictReader(f)]
    assert served == [0, 2, 4]
    record = json.loads((out / "simulation.json").read_text())
    assert record["options"]["positions"] == 1
    assert record["options"]["interval_s"] == 2.0
    assert record["recording"]["frame_shape"] == [32, 48]
    assert record["summary"]["divisions"] is None
    assert "ground truth" in result.output
    assert "none" in result.output


def test_lower_power_thins_the_recording(
    tmp_path: Path, stack: tuple[Path, np.ndarray]
) -> None:
    path, frames = stack
    out = tmp_path / "run"

    # replay.cfg records at 10 mW: 2.5 mW keeps a quarter of the photons.
    result = replay(path, out, "--frames", "2", "--power", "2.5")

    assert result.exit_code == 0, result.output
    raw = read_raw(out, 0).astype(float)
    offset = 100.0  # the camera's default for 16-bit recordings
    ratio = (raw - offset).mean() / (frames[:2] - offset).mean()
    assert ratio == pytest.approx(0.25, abs=0.01)
    record = json.loads((out / "simulation.json").read_text())
    assert record["light"] == {
        "laser_power_mw": 2.5,
        "recorded_power_mw": 10.0,
        "exposure_ms": 50.0,
        "recorded_exposure_ms": None,
        "fraction": 0.25,
        "thinning": True,
    }


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--frames", "7"], ["7 time points (--frames)", "6 frames per position"]),
        (
            ["--frames", "1", "--positions", "3"],
            ["3 positions asked (--positions)", "has 1 position(s)"],
        ),
    ],
    ids=["too-many-frames", "too-many-positions"],
)
def test_more_than_the_recording_holds_is_refused(
    tmp_path: Path, stack: tuple[Path, np.ndarray], args: list[str], said: list[str]
) -> None:
    path, _ = stack
    out = tmp_path / "run"

    result = replay(path, out, *args)

    assert result.exit_code == 2
    text = message(result)
    for words in said:
        assert words in text
    assert not out.exists()


def test_a_missing_recording_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "images.tif"

    result = replay(missing, tmp_path / "run")

    assert result.exit_code == 2
    assert str(missing) in message(result)
    assert not (tmp_path / "run").exists()


def test_no_recording_says_how_to_give_one(tmp_path: Path) -> None:
    result = simulate("--frames", "1", "--out", str(tmp_path / "run"))

    assert result.exit_code == 2
    assert "--recording PATH" in message(result)


def test_a_recording_needs_a_replay_rig(
    tmp_path: Path, stack: tuple[Path, np.ndarray]
) -> None:
    path, _ = stack
    result = CliRunner().invoke(
        app,
        ["simulate", "--recording", str(path), "--out", str(tmp_path / "run")],
    )

    assert result.exit_code == 2
    assert "needs a configuration with a ReplayHub" in message(result)
