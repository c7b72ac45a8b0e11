"""An offline simulated acquisition: MDA on the simulated rig, plus ground truth."""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import useq

from scopeloop.errors import ConfigError, DeviceError
from scopeloop.hardware import default_config, load_core, run_until_done
from scopeloop.versions import package_versions

from ._culture import Phase
from ._devices import SimHub, SimLaser, labels_of, world_of
from ._truth import AcquiredFrame, write_ground_truth

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np
    from pymmcore_plus.experimental.unicore import UniMMCore

    from scopeloop.config import SimulationOptions

__all__ = ["SimulationSummary", "run_simulation"]


def _label_of(core: UniMMCore, cls: type) -> str:
    labels = labels_of(core, cls)
    if len(labels) != 1:
        raise DeviceError(
            f"the configuration must load exactly one {cls.__name__}, found "
            f"{len(labels)}: scopeloop simulate needs a simulated rig"
        )
    return labels[0]


def _grid(n: int, spacing_um: float) -> list[tuple[float, float]]:
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return [
        (
            (i % cols - (cols - 1) / 2) * spacing_um,
            (i // cols - (rows - 1) / 2) * spacing_um,
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class SimulationSummary:
    """What a simulated acquisition produced."""

    frames: int
    frames_planned: int
    positions: int
    divisions: int
    delivered_dose_mj: float
    dead_nuclei: int
    sim_time_h: float
    wall_time_s: float
    finished: bool
    raw: str


def _written_raw(out: Path, raw: Path) -> str:
    """Where the writer put the raw stream, relative to `out`.

    ome-writers writes `raw` itself for one position, and a folder of files
    (`raw/raw_p000.ome.tiff`, ...) for several.
    """
    if raw.exists():
        return raw.name
    return raw.name.split(".")[0] + "/"


def run_simulation(
    options: SimulationOptions,
    on_frame: Callable[[int, int], None] | None = None,
) -> SimulationSummary:
    """Acquire a time-lapse on the simulated rig and write it with ground truth.

    Parameters
    ----------
    options
        What to acquire and where to write it.
    on_frame
        Called after each frame with (frames done, frames planned), e.g. for
        a progress bar. Runs on the acquisition thread: keep it quick.

    The raw stream is written by ome-writers through pymmcore-plus's MDA
    runner; ground truth goes to `ground_truth/`. If the acquisition is
    interrupted (Ctrl-C), what was acquired is still written, then the
    interruption is re-raised.

    """
    out = options.out
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty")
    config = options.config or default_config()
    core = load_core(config)
    try:
        return _acquire(core, config, options, on_frame)
    finally:
        # Collect the core on this thread: collecting it on another after a
        # sequence acquisition can abort the process.
        del core
        gc.collect()


def _acquire(
    core: UniMMCore,
    config: Path,
    options: SimulationOptions,
    on_frame: Callable[[int, int], None] | None,
) -> SimulationSummary:
    hub = _label_of(core, SimHub)
    laser = _label_of(core, SimLaser)
    core.setProperty(hub, "Seed", options.seed)
    core.setProperty(hub, "Clock", "Manual")
    core.setProperty(hub, "SpeedUp", options.speedup)
    world = world_of(core, hub)
    try:
        core.setExposure(options.exposure_ms)
        core.setProperty(laser, "PowerSetpoint_mW", options.laser_power_mw)
    except ValueError as e:  # the rig's own limits
        raise ConfigError(f"the rig refuses the options: {e}") from None
    if core.getShutterDevice():
        core.setShutterOpen(True)

    z0 = world.params.sample_z_um
    positions = [
        useq.Position(x=x, y=y, z=z0, name=f"p{i:03d}")
        for i, (x, y) in enumerate(
            _grid(options.positions, options.position_spacing_um)
        )
    ]
    z_plan = None
    if options.z_planes > 1:
        z_plan = {
            "range": (options.z_planes - 1) * options.z_step_um,
            "step": options.z_step_um,
        }
    sequence = useq.MDASequence(
        time_plan={"interval": options.wall_interval_s, "loops": options.frames},
        stage_positions=positions,
        z_plan=z_plan,
        axis_order="tpzc",
    )
    planned = options.frames * options.positions * options.z_planes
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"raw{options.output_format.suffix}"
    first = len(world.exposures)
    acquired: list[dict[str, int]] = []

    def _event_started(event: useq.MDAEvent) -> None:
        t = event.index.get("t", 0)
        if t * options.interval_s > world.now():
            world.set_time(t * options.interval_s)

    def _frame_ready(_img: np.ndarray, event: useq.MDAEvent, _meta: Any) -> None:
        acquired.append(dict(event.index))
        if on_frame is not None:
            on_frame(len(acquired), planned)

    core.mda.events.eventStarted.connect(_event_started)
    core.mda.events.frameReady.connect(_frame_ready)
    started = time.perf_counter()
    interrupted: BaseException | None = None
    # The runner works on its own thread so that Ctrl-C here cancels it
    # cleanly: the writer closes and every acquired frame stays readable.
    try:
        interrupted = run_until_done(core, sequence, output=str(raw))
    finally:
        core.mda.events.eventStarted.disconnect(_event_started)
        core.mda.events.frameReady.disconnect(_frame_ready)
    wall = time.perf_counter() - started

    exposures = world.exposures[first:]
    if len(exposures) < len(acquired):
        raise DeviceError(
            f"{len(acquired)} frames arrived but the camera made {len(exposures)} "
            "exposures: ground truth cannot be matched"
        )
    frames = [
        AcquiredFrame(
            frame=i.get("t", 0), position=i.get("p", 0), z=i.get("z", 0), exposure=e
        )
        for i, e in zip(acquired, exposures, strict=False)
    ]
    params = world.params
    counts = write_ground_truth(
        out / "ground_truth",
        frames,
        world.culture.divisions,
        (params.slide_width_um, params.slide_height_um),
    )
    dead = int((world.culture.phases() == Phase.DEAD).sum())
    summary = SimulationSummary(
        frames=len(frames),
        frames_planned=planned,
        positions=options.positions,
        divisions=counts["divisions"],
        delivered_dose_mj=round(sum(f.exposure.dose_mj for f in frames), 6),
        dead_nuclei=dead,
        sim_time_h=round(world.now() / 3600, 3),
        wall_time_s=round(wall, 3),
        finished=interrupted is None
        and len(frames) == planned
        and core.mda.status.finish_reason != "errored",
        raw=_written_raw(out, raw),
    )
    (out / "simulation.json").write_text(
        json.dumps(
            {
                "options": options.model_dump(mode="json"),
                "config": str(config),
                "culture": params.model_dump(mode="json", by_alias=True),
                "versions": package_versions(),
                "summary": asdict(summary),
            },
            indent=2,
        )
    )
    if interrupted is not None:
        raise interrupted
    if core.mda.status.finish_reason == "errored":
        # The runner re-raises on its own thread; what was acquired is written.
        raise DeviceError(
            f"the acquisition stopped on an error after {len(frames)} of "
            f"{planned} frames (see the log); what was acquired is in {out}"
        )
    return summary
