"""`scopeloop analyze`, `scopeloop train` and `scopeloop worker` end to end.

The real shipped models, real files and, for the worker, a real controller
run on demo.cfg streaming over loopback to `scopeloop worker` in its own
process.
"""

from __future__ import annotations

import csv
import json
import re
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
from run_files import read_table
from typer.testing import CliRunner

from addresses import free_address
from scopeloop.cli import app
from scopeloop.config import SessionPlan
from scopeloop.controller import run_session
from scopeloop.hardware import default_config
from scopeloop.models import Denoiser, SimClip, shipped_model_path, simulate_clip
from scopeloop.sim import CultureParams, SensorModel
from workers import quick_demo_properties, worker_process

if TYPE_CHECKING:
    from pathlib import Path

    from scopeloop.sim import SimulationSummary


@pytest.fixture(scope="module")
def clip() -> SimClip:
    params = CultureParams(
        seed=3,
        cycle_h=4.0,
        density_per_mm2=2000,
        slide_width_um=300,
        slide_height_um=300,
    )
    return simulate_clip(
        params, SensorModel(), shape=(128, 128), frames=4, interval_s=300
    )


@pytest.fixture
def stack(tmp_path: Path, clip: SimClip) -> Path:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, clip.noisy.astype(np.uint16), photometric="minisblack")
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    text = re.sub("[\u2500-\u257f]", " ", result.output)  # table borders
    return result.exit_code, " ".join(text.split())


def test_analyze_writes_restored_labels_and_tables(
    tmp_path: Path, stack: Path, clip: SimClip
) -> None:
    out = tmp_path / "analysis"

    code, output = invoke("analyze", str(stack), "--out", str(out), "--device", "cpu")

    assert code == 0, output
    assert "frames 4 over 1 position(s)" in output
    restored = tifffile.imread(out / "restored.ome.tif")
    labels = tifffile.imread(out / "labels.ome.tif")
    assert restored.shape == labels.shape == (4, 128, 128)
    assert restored.dtype == np.float32 and labels.dtype == np.uint32
    with tifffile.TiffFile(out / "labels.ome.tif") as tf:
        assert tf.is_ome and tf.series[0].axes == "TYX"
    columns, nuclei = read_table(out / "nuclei.csv")
    assert columns[:5] == ["t", "position", "id", "y", "x"]
    assert {int(r["t"]) for r in nuclei} == {0, 1, 2, 3}
    for row in nuclei[:20]:  # every row's id is a label at its centroid's frame
        t, ident = int(row["t"]), int(row["id"])
        assert ident in labels[t]
    # About as many nuclei as the ground truth shows, per frame.
    found = sum(1 for r in nuclei if r["t"] == "0")
    truth = len(np.unique(clip.labels[0])) - 1
    assert 0.5 * truth <= found <= 1.5 * truth
    columns, _ = read_table(out / "divisions.csv")
    assert columns == ["t", "position", "y", "x", "score", "mother_id", "daughter_ids"]
    record = json.loads((out / "analysis.json").read_text())
    assert record["finished"] is True and record["frames"] == 4
    assert set(record["models"]) == {"denoiser", "labels", "mitosis"}
    assert len(record["models"]["labels"]) == 64  # sha256


def test_analyze_reads_a_simulated_run_folder_per_position(
    tmp_path: Path, short_run: tuple[Path, SimulationSummary]
) -> None:
    folder, summary = short_run
    out = tmp_path / "analysis"

    code, output = invoke(
        "analyze", str(folder), "--out", str(out), "--device", "cpu", "--no-denoise"
    )

    assert code == 0, output
    with tifffile.TiffFile(out / "labels.ome.tif") as tf:
        assert len(tf.series) == summary.positions
        assert all(s.shape[0] == summary.frames // summary.positions for s in tf.series)
    _, nuclei = read_table(out / "nuclei.csv")
    assert {r["position"] for r in nuclei} == {str(p) for p in range(summary.positions)}
    assert "denoiser" not in json.loads((out / "analysis.json").read_text())["models"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "missing.tif", "--out", "x"], "does not exist"),
        (["analyze", "{stack}", "--out", "{nonempty}"], "not empty"),
        (["analyze", "{text}", "--out", "x"], "not a TIFF"),
        (["train", "labels", "--input", "{stack}"], "denoiser only"),
        (["worker", "--device", "cuda:7"], "cuda:7"),
    ],
    ids=["missing-input", "nonempty-out", "not-tiff", "input-for-labels", "no-gpu"],
)
def test_bad_requests_fail_with_a_clear_message(
    tmp_path: Path, stack: Path, args: list[str], message: str
) -> None:
    nonempty = tmp_path / "full"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("data")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    filled = [
        a.format(stack=stack, nonempty=nonempty, text=text).replace(
            "missing.tif", str(tmp_path / "missing.tif")
        )
        for a in args
    ]
    code, output = invoke(*filled)
    assert code == 2, output
    assert message in output
    assert (nonempty / "keep.txt").read_text() == "data"


def test_train_denoiser_on_a_recording_writes_a_loadable_model(
    tmp_path: Path, stack: Path
) -> None:
    model = tmp_path / "mine.pt"

    code, output = invoke(
        "train", "denoiser", "--input", str(stack), "--out", str(model),
        "--steps", "3", "--device", "cpu",
    )  # fmt: skip

    assert code == 0, output
    assert "sha256" in output
    denoiser = Denoiser.load(model)
    assert denoiser.meta["inputs"] == [str(stack)]
    assert denoiser.meta["frames"] == 4
    assert denoiser(np.full((32, 32), 100, np.uint16)).shape == (32, 32)
    assert shipped_model_path("denoiser").is_file()


def test_worker_process_analyses_a_controller_run(tmp_path: Path) -> None:
    address = free_address()
    plan = SessionPlan.model_validate(
        {
            "name": "worker-e2e",
            "positions": [{"x_um": 0, "y_um": 0}, {"x_um": 400, "y_um": 0}],
            "illumination": {"exposure_ms": 20, "laser_power_mw": 4},
            "time": {"interval_s": 0.5, "frames": 3},
            "properties": quick_demo_properties(256),
            "stream": {"worker": address, "wait_for_worker_s": 60, "drain_s": 30},
        }
    )
    with worker_process(address, "--frames", "6") as worker:
        summary = run_session(default_config(), plan, out=tmp_path / "run")
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    assert "worker done: 6 frames, 0 errors" in " ".join(output.split())
    assert summary.frames == 6
    _, frames = read_table(tmp_path / "run" / "frames.csv")
    assert [r["stream"] for r in frames] == ["analysed"] * 6
    with (tmp_path / "run" / "results" / "nuclei.csv").open(newline="") as f:
        nuclei = list(csv.DictReader(f))
    assert {r["position"] for r in nuclei} == {"0", "1"}
    assert len(nuclei) >= 6
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    (seen,) = record["workers"]
    assert seen["device"] == "cpu"
    assert set(seen["models"]) == {"denoiser", "labels", "mitosis"}
    assert all(len(sha) == 64 for sha in seen["models"].values())
