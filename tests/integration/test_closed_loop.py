"""The loop closed on demo.cfg: results change what is acquired, within the budget.

The worker is a stand-in (a thread with a real `FrameClient`) that says a
nucleus at one position is in mitosis; everything else is real: the rig, the
MDA runner, the stream, the policy, the budget and the run folder.
"""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import useq

from addresses import free_address
from scopeloop.config import BudgetSettings, SessionPlan
from scopeloop.controller import BudgetedEngine, LightBudget, run_session
from scopeloop.errors import LimitError
from scopeloop.hardware import default_config, load_core
from scopeloop.protocol import FrameClient, NucleusRecord, ResultMessage
from workers import quick_demo_properties

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT_S = 10.0


class MitosisAt:
    """A worker that sees a nucleus in mitosis at `position` and nowhere else."""

    def __init__(self, address: str, position: int) -> None:
        self.address = address
        self.position = position
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def __enter__(self) -> MitosisAt:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT_S)

    def _run(self) -> None:
        client = FrameClient(self.address, "stand-in", credits=2)
        try:
            while not self.stop.is_set():
                got = client.receive(timeout_s=0.05)
                if got is None:
                    continue
                frame, _ = got
                score = 0.95 if frame.position == self.position else 0.05
                client.send_result(
                    ResultMessage(
                        frame_index=frame.frame_index,
                        position=frame.position,
                        worker_id="stand-in",
                        nuclei=(
                            NucleusRecord(
                                id=1,
                                y=20,
                                x=30,
                                area_px=80,
                                mean_intensity=5.0,
                                mitosis_score=score,
                            ),
                        ),
                    )
                )
        finally:
            client.close()


def plan(address: str, **budget: Any) -> SessionPlan:
    return SessionPlan.model_validate(
        {
            "name": "loop",
            "positions": [{"x_um": 0, "y_um": 0}, {"x_um": 500, "y_um": 0}],
            "illumination": {"exposure_ms": 10, "laser_power_mw": 1},
            "time": {"interval_s": 1.0, "duration_s": 3.0},
            "properties": quick_demo_properties(128),
            "stream": {"worker": address, "wait_for_worker_s": TIMEOUT_S},
            "policy": {
                "kind": "event-driven",
                "fast_interval_s": 0.1,
                "fast_power_mw": 2,
                "hold_s": 60,
                "results_timeout_s": 30,
            },
            "budget": {"max_power_mw": 5, **budget},
        }
    )


def frames_of(folder: Path) -> list[dict[str, str]]:
    with (folder / "frames.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def decisions_of(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in (folder / "decisions.jsonl").read_text().splitlines()
    ]


def test_mitosis_at_one_position_makes_it_fast_there_and_only_there(
    tmp_path: Path,
) -> None:
    address = free_address()
    with MitosisAt(address, position=1):
        summary = run_session(default_config(), plan(address), out=tmp_path / "run")

    rows = frames_of(tmp_path / "run")
    per_position = Counter(r["position"] for r in rows)
    modes = {(r["position"], r["mode"]) for r in rows}
    assert ("1", "fast") in modes
    assert ("0", "fast") not in modes
    assert per_position["1"] >= 3 * per_position["0"]
    assert per_position["0"] in (3, 4)  # the slow plan: t = 0, 1, 2 (, 3) s
    fast_rows = [r for r in rows if r["mode"] == "fast"]
    assert {float(r["laser_power_mw"]) for r in fast_rows} == {2.0}
    decisions = decisions_of(tmp_path / "run")
    first = decisions[0]
    assert (first["action"], first["position"], first["mode"]) == ("fast", 1, "fast")
    assert first["trigger"]["score"] == 0.95
    assert first["trigger"]["frame_index"] >= 0
    assert 0 < first["latency_ms"] < 5000
    assert all(d["position"] != 0 for d in decisions)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["modes"]["p001"][1][1] == "fast"
    assert (
        record["budget"]["per_position_mj"][1] > record["budget"]["per_position_mj"][0]
    )
    assert summary.decisions["fast"] == 1


def test_a_dose_cap_stops_imaging_a_position_and_says_why(tmp_path: Path) -> None:
    address = free_address()
    # Fast frames at 2 mW x 10 ms = 0.02 mJ; position 1 may receive 0.1 mJ.
    with MitosisAt(address, position=1):
        run_session(
            default_config(),
            plan(address, max_dose_per_position_mj=0.1),
            out=tmp_path / "run",
        )

    rows = frames_of(tmp_path / "run")
    dose = sum(float(r["dose_mj"]) for r in rows if r["position"] == "1")
    assert dose <= 0.1 + 1e-9
    refused = [d for d in decisions_of(tmp_path / "run") if d["action"] == "refused"]
    assert refused and refused[0]["position"] == 1
    assert "dose cap" in refused[0]["reason"]
    # Position 0 goes on with its slow plan.
    assert sum(r["position"] == "0" for r in rows) >= 3


def test_the_engine_refuses_an_event_without_a_light_grant() -> None:
    core = load_core(default_config())
    try:
        budget = LightBudget(BudgetSettings(), positions=1)
        engine = BudgetedEngine(core, budget, ("Laser", "PowerSetpoint_mW"))
        event = useq.MDAEvent(
            exposure=10, properties=[("Laser", "PowerSetpoint_mW", 3.0)]
        )
        with pytest.raises(LimitError, match="without a valid light grant"):
            engine.setup_event(event)
        no_laser = useq.MDAEvent(exposure=10)
        with pytest.raises(LimitError, match="does not set the laser power"):
            engine.setup_event(no_laser)
    finally:
        del core
        import gc

        gc.collect()
