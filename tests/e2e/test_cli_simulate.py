"""`scopeloop simulate` end to end, through the command line."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
from run_files import raw_files, read_labels, read_raw, read_table
from typer.testing import CliRunner

from scopeloop import __version__
from scopeloop.cli import app

if TYPE_CHECKING:
    from pathlib import Path

    from typer.testing import Result

FRAMES, POSITIONS, INTERVAL_S = 3, 2, 900.0
FAST = ["--speedup", "1000000"]


def simulate(*args: str) -> Result:
    return CliRunner().invoke(app, ["simulate", *args])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    result = simulate(
        "--out",
        str(out),
        "--frames",
        str(FRAMES),
        "--positions",
        str(POSITIONS),
        "--interval",
        str(INTERVAL_S),
        "--seed",
        "3",
        "--power",
        "4",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    return out


def test_cli_reports_what_it_did(cli_run: Path) -> None:
    summary = json.loads((cli_run / "simulation.json").read_text())

    assert summary["summary"]["frames"] == FRAMES * POSITIONS
    assert summary["summary"]["finished"] is True
    assert summary["options"]["seed"] == 3
    assert summary["culture"]["Seed"] == 3
    assert summary["options"]["laser_power_mw"] == 4.0


OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def test_raw_ome_tiff_has_per_plane_time_and_position(cli_run: Path) -> None:
    # Arrange: one file per position (or one file with one image per position).
    files = raw_files(cli_run)
    assert files

    # Act: the OME Image of each position, from the file that holds its planes.
    images = []
    for position in range(POSITIONS):
        path = files[position] if len(files) > 1 else files[0]
        with tifffile.TiffFile(path) as tf:
            root = ET.fromstring(tf.ome_metadata)
        images.append(root.findall(f"{OME}Image")[position])

    # Assert: one Plane per time point with DeltaT and its field's stage position.
    fields = []
    for image in images:
        planes = image.findall(f"{OME}Pixels/{OME}Plane")
        assert len(planes) == FRAMES, image.get("Name")
        times = [float(p.attrib["DeltaT"]) for p in planes]
        assert times == sorted(times)
        assert [int(p.attrib["TheT"]) for p in planes] == list(range(FRAMES))
        xy = {
            (float(p.attrib["PositionX"]), float(p.attrib["PositionY"])) for p in planes
        }
        assert len(xy) == 1  # one field per image
        fields.append(xy.pop())
        pixels = image.find(f"{OME}Pixels")
        assert pixels is not None
        assert float(pixels.attrib["PhysicalSizeX"]) == pytest.approx(0.5)
    assert len(set(fields)) == POSITIONS  # the positions differ
    _, frames = read_table(cli_run / "ground_truth" / "frames.csv")
    stage = {(float(r["stage_x_um"]), float(r["stage_y_um"])) for r in frames}
    assert set(fields) == stage


def test_nuclei_table_has_the_documented_columns_and_sane_values(cli_run: Path) -> None:
    columns, rows = read_table(cli_run / "ground_truth" / "nuclei.csv")

    assert {"frame", "position", "id", "y", "x", "phase", "dose_mj"} <= set(columns)
    assert rows
    assert {int(r["frame"]) for r in rows} == set(range(FRAMES))
    assert {int(r["position"]) for r in rows} == set(range(POSITIONS))
    assert {r["phase"] for r in rows} <= {
        "interphase",
        "prophase",
        "metaphase",
        "anaphase",
        "telophase",
        "dead",
    }
    assert all(0 <= float(r["y"]) < 512 and 0 <= float(r["x"]) < 512 for r in rows)
    # Dose accumulates 4 mW x 50 ms = 0.2 mJ per frame before the frame's own.
    frame0 = [float(r["dose_mj"]) for r in rows if r["frame"] == "0"]
    frame2 = [float(r["dose_mj"]) for r in rows if r["frame"] == "2"]
    assert max(frame0) == 0.0
    assert np.median(frame2) == pytest.approx(0.4)


def test_division_table_has_the_documented_columns(cli_run: Path) -> None:
    columns, rows = read_table(cli_run / "ground_truth" / "divisions.csv")

    assert columns[:7] == [
        "frame",
        "position",
        "y",
        "x",
        "sim_time_s",
        "mother_id",
        "daughter_ids",
    ]
    for r in rows:
        assert 0 < int(r["frame"]) < FRAMES
        t = float(r["sim_time_s"])
        assert (int(r["frame"]) - 1) * INTERVAL_S < t <= int(r["frame"]) * INTERVAL_S
        assert len(r["daughter_ids"].split(";")) == 2


@pytest.mark.parametrize(
    "position", range(POSITIONS), ids=[f"p{p}" for p in range(POSITIONS)]
)
def test_labels_align_with_raw(cli_run: Path, position: int) -> None:
    raw = read_raw(cli_run, position)
    labels = read_labels(cli_run, position)

    assert raw.shape == labels.shape == (FRAMES, 512, 512)
    assert labels.dtype == np.uint32
    _, rows = read_table(cli_run / "ground_truth" / "nuclei.csv")
    # Each listed nucleus centre lands on its own label (a few are covered by
    # an overlapping neighbour).
    hits = [
        labels[
            int(r["frame"]),
            min(round(float(r["y"])), 511),
            min(round(float(r["x"])), 511),
        ]
        == int(r["id"])
        for r in rows
        if int(r["position"]) == position
    ]
    assert np.mean(hits) > 0.95


def test_ome_zarr_output_is_a_valid_store(tmp_path: Path) -> None:
    out = tmp_path / "zarr_run"

    result = simulate(
        "--out",
        str(out),
        "--frames",
        "2",
        "--positions",
        "2",
        "--format",
        "ome-zarr",
        *FAST,
    )

    assert result.exit_code == 0, result.output
    store = out / "raw.ome.zarr"
    assert store.is_dir()
    meta = json.loads((store / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert "ome" in meta["attributes"]
    yaozarrs = pytest.importorskip("yaozarrs")
    yaozarrs.validate_zarr_store(str(store))
    series = sorted(
        p for p in store.iterdir() if (p / "zarr.json").is_file() and p.name != "OME"
    )
    assert len(series) == 2
    tensorstore = pytest.importorskip("tensorstore")
    data = (
        tensorstore.open(
            {
                "driver": "zarr3",
                "kvstore": {"driver": "file", "path": str(series[0] / "0")},
            }
        )
        .result()
        .read()
        .result()
    )
    assert data.shape == (2, 512, 512)
    assert data.dtype == np.uint16
    assert data.mean() > 100  # offset plus some signal


BAD_CLI = [
    pytest.param(["--frames", "0"], "frames", id="zero-frames"),
    pytest.param(["--exposure", "-5"], "exposure", id="negative-exposure"),
    pytest.param(["--positions", "0"], "positions", id="zero-positions"),
    pytest.param(["--format", "png"], "png", id="unknown-format"),
]


@pytest.mark.parametrize(("args", "named"), BAD_CLI)
def test_bad_options_exit_2_and_name_the_option(
    tmp_path: Path, args: list[str], named: str
) -> None:
    out = tmp_path / "never"

    result = simulate("--out", str(out), *args)

    assert result.exit_code == 2
    assert named in " ".join(result.output.split())
    assert not out.exists()


def test_out_folder_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")

    result = simulate("--out", str(tmp_path), "--frames", "1", *FAST)

    assert result.exit_code == 2
    assert "not empty" in " ".join(result.output.split())  # rich wraps lines
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    result = simulate(
        "--out", str(tmp_path / "run"), "--config", str(tmp_path / "no.cfg")
    )

    assert result.exit_code == 2
    assert "no.cfg" in "".join(result.output.split())


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])

    assert result.exit_code == 0
    assert __version__ in result.output


def test_power_beyond_the_rig_is_refused_naming_the_value(tmp_path: Path) -> None:
    result = simulate("--out", str(tmp_path / "run"), "--power", "500", "--frames", "1")

    assert result.exit_code == 2
    assert "500" in result.output
    assert "PowerSetpoint_mW" in result.output
