"""An offline simulated acquisition: MDA on the simulated rig, plus ground truth."""

from __future__ import annotations

import csv
import gc
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import useq

from scopeloop.errors import ConfigError, DeviceError
from scopeloop.hardware import default_config, load_core, run_until_done
from scopeloop.storage import file_sha256
from scopeloop.versions import package_versions

from ._culture import Phase
from ._devices import SimHub, SimLaser, labels_of, world_of
from ._replay import ReplayHub, replay_of
from ._truth import AcquiredFrame, write_ground_truth

if TYPE_CHECKING:
    from collections.abc import Callable

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
    divisions: int | None
    """Divisions in view (ground truth); None on a replay rig."""
    delivered_dose_mj: float
    dead_nuclei: int | None
    """Dead nuclei on the slide (ground truth); None on a replay rig."""
    sim_time_h: float
    """Simulated time covered (on a replay rig: replay time)."""
    wall_time_s: float
    finished: bool
    raw: str
    ground_truth: str | None = "ground_truth/"
    """Where the ground truth is, relative to the output; None: none written."""
    recording: str | None = None
    """The recording replayed (replay rig only)."""
    light: float | None = None
    """Light relative to the recording's (replay rig; below 1: thinned)."""


def _written_raw(out: Path, raw: Path) -> str:
    """Where the writer put the raw stream, relative to `out`.

    ome-writers writes `raw` itself for one position, and a folder of files
    (`raw/raw_p000.ome.tiff`, ...) for several.
    """
    if raw.exists():
        return raw.name
    return raw.name.split(".")[0] + "/"


def _set_light(
    core: UniMMCore, laser: str, exposure_ms: float, laser_power_mw: float
) -> None:
    """Set the exposure and the laser's power, and open the shutter if there is one."""
    try:
        core.setExposure(exposure_ms)
        core.setProperty(laser, "PowerSetpoint_mW", laser_power_mw)
    except ValueError as e:  # the rig's own limits
        raise ConfigError(f"the rig refuses the options: {e}") from None
    if core.getShutterDevice():
        core.setShutterOpen(True)


def _run(
    core: UniMMCore,
    sequence: useq.MDASequence,
    raw: Path,
    event_started: Callable[[useq.MDAEvent], None],
    frame_ready: Callable[[np.ndarray, useq.MDAEvent, Any], None],
) -> tuple[BaseException | None, float]:
    """Acquire `sequence` into `raw` with the callbacks connected.

    Returns the interruption (Ctrl-C) to re-raise once what was acquired is
    written, or None, and the wall time taken in seconds.
    """
    core.mda.events.eventStarted.connect(event_started)
    core.mda.events.frameReady.connect(frame_ready)
    started = time.perf_counter()
    # The runner works on its own thread so that Ctrl-C here cancels it
    # cleanly: the writer closes and every acquired frame stays readable.
    try:
        interrupted = run_until_done(core, sequence, output=str(raw))
    finally:
        core.mda.events.eventStarted.disconnect(event_started)
        core.mda.events.frameReady.disconnect(frame_ready)
    return interrupted, time.perf_counter() - started


def _finished(
    core: UniMMCore, interrupted: BaseException | None, frames: int, planned: int
) -> bool:
    """Whether the acquisition ran to its end: every frame planned, no error."""
    return (
        interrupted is None
        and frames == planned
        and core.mda.status.finish_reason != "errored"
    )


def _raise_if_stopped(
    core: UniMMCore,
    interrupted: BaseException | None,
    frames: int,
    planned: int,
    out: Path,
) -> None:
    """Re-raise an interruption, or an error that stopped the acquisition.

    Called once what was acquired is written.
    """
    if interrupted is not None:
        raise interrupted
    if core.mda.status.finish_reason == "errored":
        # The runner re-raises on its own thread; what was acquired is written.
        raise DeviceError(
            f"the acquisition stopped on an error after {frames} of "
            f"{planned} frames (see the log); what was acquired is in {out}"
        )


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

    On a replay rig (a configuration with a `ReplayHub`, e.g.
    `hardware_configs/replay.cfg`) the recording's frames are acquired
    instead, on a manual replay clock, with no ground truth: see
    `_acquire_replay`.

    """
    out = options.out
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty")
    config = options.config or default_config()
    core = load_core(config)
    try:
        if labels_of(core, ReplayHub):
            return _acquire_replay(core, config, options, on_frame)
        if options.recording is not None:
            raise ConfigError(
                f"a recording to replay ({options.recording}) needs a configuration "
                f"with a ReplayHub (e.g. hardware_configs/replay.cfg); {config} "
                "has none"
            )
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
    _set_light(core, laser, options.exposure_ms, options.laser_power_mw)

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

    interrupted, wall = _run(core, sequence, raw, _event_started, _frame_ready)

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
        finished=_finished(core, interrupted, len(frames), planned),
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
    _raise_if_stopped(core, interrupted, len(frames), planned, out)
    return summary


# -- replay rig ----------------------------------------------------------------


def _served_index(t: int, interval_s: float, frame_interval_s: float) -> int:
    """Recorded frame the replay clock serves at time point `t` (as the hub does)."""
    return math.floor(t * interval_s / frame_interval_s + 1e-9)


def _max_time_points(frames: int, interval_s: float, frame_interval_s: float) -> int:
    """Most time points at `interval_s` that stay within `frames` recorded frames."""
    if interval_s <= 0:
        return 100_000  # every time point serves the first frame
    last = math.ceil((frames - 1e-9) * frame_interval_s / interval_s) - 1
    while _served_index(last + 1, interval_s, frame_interval_s) < frames:
        last += 1
    while last > 0 and _served_index(last, interval_s, frame_interval_s) >= frames:
        last -= 1
    return last + 1


def _mtime(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _recording_record(path: Path, hub: ReplayHub) -> dict[str, Any]:
    """Which recording was replayed: where, which bytes, and its shape."""
    recording = hub.recording
    path = path.resolve()
    record: dict[str, Any] = {"path": str(path)}
    if path.is_file():
        stat = path.stat()
        record.update(
            size_bytes=stat.st_size,
            mtime=_mtime(stat.st_mtime),
            sha256=file_sha256(path),
        )
    else:  # an OME-Zarr or a run folder: too many files to hash, say how big
        stats = [f.stat() for f in path.rglob("*") if f.is_file()]
        record.update(
            files=len(stats),
            size_bytes=sum(s.st_size for s in stats),
            mtime=_mtime(max((s.st_mtime for s in stats), default=0.0)),
        )
    first = recording.series[0].frames
    record.update(
        positions=len(recording.series),
        frames=[len(s) for s in recording.series],
        frame_shape=[int(n) for n in first.shape[1:]],
        dtype=str(first.dtype),
        frame_interval_s=recording.frame_interval_s,
        stage_positions_um=[list(xy) for xy in hub.stage_positions_um()],
    )
    return record


def _device_record(core: UniMMCore, label: str) -> dict[str, Any]:
    return {
        "description": core.getDeviceDescription(label).strip(),
        "properties": {
            name: core.getProperty(label, name)
            for name in core.getDevicePropertyNames(label)
        },
    }


def _replay_setup(core: UniMMCore, config: Path, options: SimulationOptions) -> str:
    """Set the hub (seed, recording, manual clock); returns the hub's label."""
    labels = labels_of(core, ReplayHub)
    if len(labels) != 1:
        raise DeviceError(
            f"{config} loads {len(labels)} ReplayHubs: scopeloop simulate replays "
            "one recording"
        )
    label = labels[0]
    core.setProperty(label, "Seed", options.seed)
    if options.recording is not None:
        # A missing or unreadable recording is a ConfigError naming the path.
        core.setProperty(label, "Recording", str(options.recording))
    elif not core.getProperty(label, "Recording"):
        raise ConfigError(
            f"{config} sets no recording for {label} to replay: give one with "
            "--recording PATH (a TIFF/OME-TIFF stack, an OME-Zarr or a scopeloop "
            "run folder)"
        )
    core.setProperty(label, "Clock", "Manual")
    return label


def _acquire_replay(
    core: UniMMCore,
    config: Path,
    options: SimulationOptions,
    on_frame: Callable[[int, int], None] | None,
) -> SimulationSummary:
    """Acquire a recording on the replay rig: deterministic, no ground truth.

    The replay clock is manual: before each time point t it is set to
    t x interval, so the frame served is the one recorded then (with the
    recording's own interval, frame t). Positions are the recording's, where
    the hub puts them on the stage. Below the recorded power the camera thins
    the recorded photons, seeded by `options.seed`. Options left unset take
    the recording's values (see `SimulationOptions`); asking for more
    positions or time points than the recording holds is a `ConfigError`.
    """
    label = _replay_setup(core, config, options)
    hub = replay_of(core, label)
    recording = hub.recording
    path = Path(core.getProperty(label, "Recording"))
    given = options.model_fields_set

    recorded = len(recording.series)
    n_positions = options.positions if "positions" in given else recorded
    if n_positions > recorded:
        raise ConfigError(
            f"{n_positions} positions asked (--positions) but the recording {path} "
            f"has {recorded} position(s)"
        )
    if options.z_planes > 1:
        raise ConfigError(
            f"z_planes={options.z_planes} (--z-planes): a recording has one plane "
            "per frame, replay cannot acquire z-stacks"
        )
    frame_interval_s = hub.frame_interval_s
    interval_s = options.interval_s if "interval_s" in given else frame_interval_s
    length = min(len(s) for s in recording.series[:n_positions])
    most = _max_time_points(length, interval_s, frame_interval_s)
    if options.frames > most:
        last = _served_index(options.frames - 1, interval_s, frame_interval_s)
        raise ConfigError(
            f"{options.frames} time points (--frames) every {interval_s:g} s reach "
            f"recorded frame index {last}, beyond the recording {path}: it has "
            f"{length} frames per position (0..{length - 1}), {frame_interval_s:g} s "
            f"apart; at most {most} time points at this interval"
        )

    recorded_power = float(core.getProperty(label, "RecordedPower_mW"))
    recorded_exposure = float(core.getProperty(label, "RecordedExposure_ms"))
    power = options.laser_power_mw if "laser_power_mw" in given else recorded_power
    exposure = options.exposure_ms
    if "exposure_ms" not in given and recorded_exposure > 0:
        exposure = recorded_exposure
    laser = labels_of(core, SimLaser)
    if len(laser) != 1:
        raise DeviceError(
            f"{config} must load exactly one SimLaser, found {len(laser)}"
        )
    _set_light(core, laser[0], exposure, power)
    light = power / recorded_power
    if recorded_exposure > 0:
        light *= exposure / recorded_exposure

    resolved = options.model_copy(
        update={
            "positions": n_positions,
            "interval_s": interval_s,
            "laser_power_mw": power,
            "exposure_ms": exposure,
            "position_spacing_um": float(core.getProperty(label, "PositionSpacing_um")),
        }
    )
    positions = [
        useq.Position(x=x, y=y, name=f"p{i:03d}")
        for i, (x, y) in enumerate(hub.stage_positions_um()[:n_positions])
    ]
    sequence = useq.MDASequence(
        time_plan={"interval": resolved.wall_interval_s, "loops": options.frames},
        stage_positions=positions,
        axis_order="tpzc",
    )
    planned = options.frames * n_positions
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"raw{options.output_format.suffix}"
    record: dict[str, Any] = {
        "options": resolved.model_dump(mode="json"),
        "config": str(config),
        "recording": _recording_record(path, hub),
        "replay": {
            device: _device_record(core, device)
            for device in (label, core.getCameraDevice())
        },
        "light": {
            "laser_power_mw": power,
            "recorded_power_mw": recorded_power,
            "exposure_ms": exposure,
            "recorded_exposure_ms": recorded_exposure or None,
            "fraction": round(light, 9),
            "thinning": light < 1,
        },
        "ground_truth": None,
        "versions": package_versions(),
    }
    served: list[dict[str, Any]] = []

    def _event_started(event: useq.MDAEvent) -> None:
        core.setProperty(label, "ReplayTime_s", event.index.get("t", 0) * interval_s)

    def _frame_ready(_img: np.ndarray, event: useq.MDAEvent, _meta: Any) -> None:
        # What the camera just served, from the hub's clock and the stage (the
        # camera's own metadata does not reach frameReady for single snaps).
        now = hub.now()
        position = hub.position_at(*core.getXYPosition())
        served.append(
            {
                "frame_index": len(served),
                "t": event.index.get("t", 0),
                "p": event.index.get("p", 0),
                "recorded_position": position,
                "recorded_frame": min(
                    math.floor(now / frame_interval_s + 1e-9),
                    len(recording.series[position]) - 1,
                ),
                "replay_time_s": now,
            }
        )
        if on_frame is not None:
            on_frame(len(served), planned)

    # One event at a time: a sequenced acquisition would read the clock once.
    engine = core.mda.engine
    if engine is not None and hasattr(engine, "use_hardware_sequencing"):
        engine.use_hardware_sequencing = False
    interrupted, wall = _run(core, sequence, raw, _event_started, _frame_ready)

    with (out / "replay_frames.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(served[0]) if served else ["t"])
        writer.writeheader()
        writer.writerows(served)
    shutter = core.getShutterOpen() if core.getShutterDevice() else True
    summary = SimulationSummary(
        frames=len(served),
        frames_planned=planned,
        positions=n_positions,
        divisions=None,
        delivered_dose_mj=round(len(served) * power * exposure / 1000 * shutter, 6),
        dead_nuclei=None,
        sim_time_h=round(hub.now() / 3600, 6),
        wall_time_s=round(wall, 3),
        finished=_finished(core, interrupted, len(served), planned),
        raw=_written_raw(out, raw),
        ground_truth=None,
        recording=str(path.resolve()),
        light=round(light, 9),
    )
    record["summary"] = asdict(summary)
    (out / "simulation.json").write_text(json.dumps(record, indent=2))
    _raise_if_stopped(core, interrupted, len(served), planned, out)
    return summary
