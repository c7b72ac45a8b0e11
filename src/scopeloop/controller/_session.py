"""A controller session: acquire a plan on a rig, stream frames, keep everything.

The acquisition runs on pymmcore-plus's MDA runner, fed by an `EventSource`.
On the runner thread, `frameReady` only records the frame in the ledger and
hands a copy to the stream's queue (never blocking); the raw writer is the
runner's own ome-writers sink, so every frame reaches disk whatever happens
downstream. Results come back on the stream's thread and are written by the
result-intake thread.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from scopeloop import __version__
from scopeloop.errors import ConfigError, DeviceError
from scopeloop.hardware import load_core, run_until_done
from scopeloop.protocol import ArraySpec, FrameMessage, FrameServer, ServerStats
from scopeloop.storage import file_sha256, new_run_folder, write_json
from scopeloop.versions import package_versions

from ._budget import BudgetedEngine, LightBudget
from ._decisions import DecisionLog
from ._events import EventSource, Site
from ._intake import ResultIntake
from ._ledger import FrameLedger
from ._policy import EventDrivenPolicy, make_policy

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np
    import useq
    from pymmcore_plus.experimental.unicore import UniMMCore

    from scopeloop.config import SessionPlan

__all__ = ["PositionStatus", "RunStatus", "RunSummary", "run_session"]

logger = logging.getLogger("scopeloop.controller")


@dataclass(frozen=True, slots=True)
class PositionStatus:
    """A live snapshot of one position."""

    name: str
    mode: str
    frames: int
    dose_mj: float
    divisions: int


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A live snapshot for progress displays."""

    frames: int
    elapsed_s: float
    frames_per_s: float
    stream: ServerStats | None
    latency_p50_ms: float | None
    positions: tuple[PositionStatus, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """How a run went."""

    folder: str
    finish_reason: str
    frames: int
    positions: int
    elapsed_s: float
    frames_per_s: float
    delivered_dose_mj: float
    stream_states: dict[str, int] = field(default_factory=dict)
    results: int = 0
    rejected_messages: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    decisions: dict[str, int] = field(default_factory=dict)
    dose_per_position_mj: list[float] = field(default_factory=list)


def _check_rig(core: UniMMCore, plan: SessionPlan) -> None:
    """Refuse, before anything moves, a plan the rig cannot carry out."""
    ill = plan.illumination
    devices = set(core.getLoadedDevices())
    if ill.laser_device not in devices:
        raise ConfigError(
            f"plan: illumination.laser_device = {ill.laser_device!r} is not a device "
            f"of this configuration ({', '.join(sorted(devices - {'Core'}))})"
        )
    if not core.hasProperty(ill.laser_device, ill.laser_property):
        raise ConfigError(
            f"plan: illumination.laser_property = {ill.laser_property!r}: device "
            f"{ill.laser_device!r} has no such property"
        )
    if core.hasPropertyLimits(ill.laser_device, ill.laser_property):
        high = core.getPropertyUpperLimit(ill.laser_device, ill.laser_property)
        if ill.laser_power_mw > high:
            raise ConfigError(
                f"plan: illumination.laser_power_mw = {ill.laser_power_mw} exceeds "
                f"{ill.laser_device}.{ill.laser_property} limit {high}"
            )
    if ill.channel_group and not core.isConfigDefined(
        ill.channel_group, ill.channel or ""
    ):
        raise ConfigError(
            f"plan: illumination.channel = {ill.channel!r} is not a preset of group "
            f"{ill.channel_group!r}"
        )
    for setting in plan.properties:
        if setting.device not in devices or not core.hasProperty(
            setting.device, setting.property
        ):
            raise ConfigError(
                f"plan: properties: {setting.device}.{setting.property} does not exist "
                "in this configuration"
            )
    if plan.stage_positions() and not core.getXYStageDevice():
        raise ConfigError("plan: positions given but the configuration has no XY stage")
    if plan.z.planes > 1 and not core.getFocusDevice():
        raise ConfigError(
            "plan: z.planes > 1 but the configuration has no focus device"
        )


def _check_camera(core: UniMMCore) -> None:
    """The camera must say what frames it makes (a replay rig without one cannot)."""
    try:
        core.getImageWidth()
        core.getImageHeight()
    except Exception as e:
        raise ConfigError(f"the camera cannot acquire: {e}") from None


def _check_positions(core: UniMMCore, plan: SessionPlan) -> None:
    """Visit every stage position once, without light, before the run.

    A position the stage refuses (beyond its travel, or away from every
    position of a replayed recording) is a ConfigError naming it, before any
    frame; the stage goes back where it was.
    """
    positions = plan.stage_positions()
    if not positions or not core.getXYStageDevice():
        return
    start = core.getXYPosition()
    try:
        for p in positions:
            try:
                core.setXYPosition(p.x_um, p.y_um)
                core.waitForDevice(core.getXYStageDevice())
            except Exception as e:
                raise ConfigError(
                    f"plan: position {p.name!r} at ({p.x_um:g}, {p.y_um:g}) um: "
                    f"the stage refuses it: {e}"
                ) from None
    finally:
        with contextlib.suppress(Exception):
            core.setXYPosition(*start)


def _rig_record(core: UniMMCore) -> dict[str, Any]:
    """Devices that replay a recording (a `Recording` property): what they replay."""
    record: dict[str, Any] = {}
    for label in core.getLoadedDevices():
        if label != "Core" and core.hasProperty(label, "Recording"):
            record[label] = {
                "description": core.getDeviceDescription(label).strip(),
                "properties": {
                    name: core.getProperty(label, name)
                    for name in core.getDevicePropertyNames(label)
                },
            }
    return record


def _apply_properties(core: UniMMCore, plan: SessionPlan) -> None:
    """Set the plan's device properties; a value the rig refuses is a ConfigError."""
    for setting in plan.properties:
        try:
            core.setProperty(setting.device, setting.property, setting.value)
        except Exception as e:
            raise ConfigError(
                f"plan: properties: {setting.device}.{setting.property} = "
                f"{setting.value!r}: {e}"
            ) from None


def _sites(core: UniMMCore, plan: SessionPlan) -> list[Site]:
    focus = core.getPosition() if core.getFocusDevice() else None
    positions = plan.stage_positions()
    if not positions:
        z = focus if plan.z.planes > 1 else None
        return [Site("p000", None, None, z)]
    return [
        Site(
            p.name or f"p{i:03d}",
            p.x_um,
            p.y_um,
            p.z_um if p.z_um is not None else (focus if plan.z.planes > 1 else None),
        )
        for i, p in enumerate(positions)
    ]


class _Acquisition:
    """What the runner thread does with each frame."""

    def __init__(
        self,
        plan: SessionPlan,
        sites: list[Site],
        ledger: FrameLedger,
        server: FrameServer | None,
        pixel_size_um: float,
    ) -> None:
        self.plan = plan
        self.sites = sites
        self.ledger = ledger
        self.server = server
        self.pixel_size_um = pixel_size_um
        self.frames = 0
        self.per_position = [0] * len(sites)
        self.divisions = [0] * len(sites)
        self.dose_mj = 0.0
        self.started = time.monotonic()
        self.errors = 0
        self._specs: dict[tuple[tuple[int, ...], str], ArraySpec] = {}
        self._laser = (
            plan.illumination.laser_device,
            plan.illumination.laser_property,
        )
        self._state = "queued" if server else "not streamed"

    def on_frame(self, image: np.ndarray, event: useq.MDAEvent, _meta: Any) -> None:
        now = time.monotonic()
        index = self.frames
        self.frames += 1
        try:
            self._record(index, image, event, now)
        except Exception:  # analysis must never break acquisition
            self.errors += 1
            logger.exception("cannot stream frame %d", index)

    def _record(
        self, index: int, image: np.ndarray, event: useq.MDAEvent, now: float
    ) -> None:
        event_index = event.index
        p = event_index.get("p", 0)
        t = event_index.get("t", 0)
        if 0 <= p < len(self.per_position):
            self.per_position[p] += 1
        z = event_index.get("z", 0)
        name = self.sites[p].name
        power = 0.0
        for device, prop, value in event.properties or ():
            if (device, prop) == self._laser:
                power = float(value)
                break
        exposure = float(event.exposure or 0.0)
        dose = power * exposure / 1000
        self.dose_mj += dose
        elapsed = now - self.started
        self.ledger.add(
            index,
            {
                "position": p,
                "position_name": name,
                "t": t,
                "z": z,
                "time_s": round(elapsed, 4),
                "mode": event.metadata.get("mode", ""),
                "exposure_ms": exposure,
                "laser_power_mw": power,
                "dose_mj": round(dose, 6),
                "stream": self._state,
            },
            now,
        )
        if self.server is None:
            return
        # The runner hands each frame its own array; copy only a view.
        frame = image if image.flags.owndata else image.copy()
        spec = self._specs.get((frame.shape, frame.dtype.str))
        if spec is None:
            spec = self._specs.setdefault(
                (frame.shape, frame.dtype.str), ArraySpec.of("image", frame)
            )
        # Validated: costs less than model_construct, and checks the values.
        try:
            header = FrameMessage(
                frame_index=index,
                position=p,
                position_name=name,
                t_index=t,
                z_index=z,
                time_s=elapsed,
                exposure_ms=exposure,
                laser_power_mw=power,
                pixel_size_um=self.pixel_size_um,
                buffers=(spec,),
            )
        except ValueError as e:  # e.g. a non-finite value: not sent, said why
            self.ledger.frame_skipped(index, f"cannot describe the frame: {e}")
            raise
        self.server.submit(header, frame)


def run_session(
    config: Path,
    plan: SessionPlan,
    *,
    plan_file: Path | None = None,
    out: Path | None = None,
    worker: str | None = None,
    on_tick: Callable[[RunStatus], None] | None = None,
    on_finished: Callable[[Any, Path, list[dict[str, Any]]], object] | None = None,
) -> RunSummary:
    """Run `plan` on the rig of `config`; write everything into a new run folder.

    Parameters
    ----------
    config
        Micro-Manager configuration (a simulated or a real rig).
    plan
        The validated session plan.
    plan_file
        Where the plan came from (recorded in run.json).
    out
        Exact run folder (new or empty); default: a new folder under the plan's
        output root.
    worker
        Overrides the plan's worker address; ``"none"`` streams nothing.
    on_tick
        Called a few times a second with a `RunStatus` (on the calling thread).
    on_finished
        Called after the acquisition with the core, the run folder and the
        rows of frames.csv, before the core is released (e.g. to write a
        simulated rig's ground truth); its errors are logged, never raised.

    A Ctrl-C stops the acquisition cleanly; what was acquired stays complete,
    and the summary says the run was cancelled.

    """
    if worker is not None:
        plan = plan.model_copy(
            update={"stream": plan.stream.model_copy(update={"worker": worker})}
        )
    core = load_core(config)
    try:
        _check_rig(core, plan)
        _apply_properties(core, plan)
        _check_camera(core)
        _check_positions(core, plan)
        # Listen before making the run folder: a taken address leaves nothing.
        ledger = FrameLedger()
        server = (
            FrameServer(
                plan.stream.worker,
                ledger,
                max_queue=plan.stream.max_queue,
                worker_timeout_s=plan.stream.worker_timeout_s,
            )
            if plan.stream.enabled
            else None
        )
        try:
            folder = new_run_folder(plan.output.root, plan.name, exact=out)
            return _run(
                core, config, plan, plan_file, folder, ledger, server, on_tick,
                on_finished,
            )  # fmt: skip
        finally:
            if server is not None:
                server.close()  # idempotent: a run that got going closed it, drained
    finally:
        del core
        gc.collect()


def _run(
    core: UniMMCore,
    config: Path,
    plan: SessionPlan,
    plan_file: Path | None,
    folder: Path,
    ledger: FrameLedger,
    server: FrameServer | None,
    on_tick: Callable[[RunStatus], None] | None,
    on_finished: Callable[[Any, Path, list[dict[str, Any]]], object] | None,
) -> RunSummary:
    record: dict[str, Any] = {
        "scopeloop": __version__,
        "started": datetime.now().isoformat(timespec="seconds"),
        "plan_file": str(plan_file) if plan_file else None,
        "plan": plan.model_dump(mode="json"),
        "config": {"path": str(config.resolve()), "sha256": file_sha256(config)},
        "versions": package_versions(),
    }
    if rig := _rig_record(core):
        record["replay"] = rig
    write_json(folder / "run.json", record)
    sites = _sites(core, plan)
    record["positions"] = [asdict(s) for s in sites]
    pixel_size_um = core.getPixelSizeUm()

    intake = ResultIntake(folder / "results", [s.name for s in sites], pixel_size_um)
    budget = LightBudget(plan.budget, len(sites))
    policy = make_policy(plan, len(sites))
    decisions = DecisionLog(folder / "decisions.jsonl")
    source = EventSource(
        plan, sites, policy=policy, budget=budget, on_decision=decisions.write
    )

    def on_result(result: Any, arrays: list[Any], received_at: float) -> None:
        intake.put(result, arrays, received_at)
        if result.divisions and 0 <= result.position < len(sites):
            acquisition.divisions[result.position] += len(result.divisions)
        acquired = ledger.acquired_at(result.frame_index)
        origin = received_at - source.now_s()
        changes = policy.observe(
            result, None if acquired is None else acquired - origin, source.now_s()
        )
        for decision in changes:
            decisions.write(decision)
        if changes:
            source.wake()

    ledger.on_result = on_result
    if server is not None:
        record["stream"] = {"address": server.bound_address}
        write_json(folder / "run.json", record)
    acquisition = _Acquisition(plan, sites, ledger, server, pixel_size_um)
    suffix = ".ome.zarr" if plan.output.format.value == "ome-zarr" else ".ome.tiff"
    raw = folder / f"raw{suffix}"

    def tick() -> None:
        if on_tick is not None:
            on_tick(_status(acquisition, server, ledger, source, budget))

    def sequence_started(*_: Any) -> None:
        acquisition.started = time.monotonic()

    reason, detail = "completed", ""
    core.mda.events.sequenceStarted.connect(sequence_started)
    core.mda.events.frameReady.connect(acquisition.on_frame)
    if server is not None and plan.stream.wait_for_worker_s > 0:
        if not server.wait_for_worker(plan.stream.wait_for_worker_s):
            logger.warning(
                "no worker connected within %g s; acquiring anyway",
                plan.stream.wait_for_worker_s,
            )
        record["stream"]["worker_connected_before_start"] = server.stats.workers > 0
        write_json(folder / "run.json", record)
    # Every event's light is redeemed by the engine against its grant. Its
    # hardware sequencing is off: sequencing would merge the event source into
    # one sequence, expanding it up front; the source must be asked one event
    # at a time.
    previous_engine = core.mda.engine
    ill = plan.illumination
    core.mda.set_engine(
        BudgetedEngine(core, budget, (ill.laser_device, ill.laser_property))
    )
    try:
        interrupted = run_until_done(core, source, output=str(raw), on_tick=tick)
        if interrupted is not None:
            reason, detail = "cancelled", "interrupted (Ctrl-C)"
        elif core.mda.status.finish_reason == "errored":
            # The runner re-raises on its own thread, out of reach here.
            raise RuntimeError("the MDA runner stopped on an error (see the log)")
    except Exception as e:
        reason, detail = "error", f"{type(e).__name__}: {e}"
        raise DeviceError(f"acquisition failed: {e}") from e
    finally:
        source.stop()
        if previous_engine is not None:
            core.mda.set_engine(previous_engine)
        core.mda.events.frameReady.disconnect(acquisition.on_frame)
        core.mda.events.sequenceStarted.disconnect(sequence_started)
        elapsed = time.monotonic() - acquisition.started
        # The acquisition's record goes to disk first, whatever happens next.
        ledger.write_csv(folder / "frames.csv")
        if on_finished is not None:
            try:
                on_finished(core, folder, ledger.rows())
            except Exception:
                logger.exception("after the acquisition: on_finished failed")
        outcome: dict[str, RunSummary] = {}

        def write_record() -> None:
            ledger.write_csv(folder / "frames.csv")  # with the final stream states
            stats = server.stats if server is not None else None
            summary = RunSummary(
                folder=str(folder),
                finish_reason=reason,
                frames=acquisition.frames,
                positions=len(sites),
                elapsed_s=round(elapsed, 3),
                frames_per_s=round(acquisition.frames / elapsed, 3)
                if elapsed > 0
                else 0.0,
                delivered_dose_mj=round(acquisition.dose_mj, 6),
                stream_states=ledger.counts(),
                results=intake.written,
                rejected_messages=stats.rejected if stats else 0,
                latency_p50_ms=ledger.latency_ms(0.5),
                latency_p99_ms=ledger.latency_ms(0.99),
                decisions=dict(decisions.counts),
                dose_per_position_mj=[round(d, 6) for d in budget.dose_mj],
            )
            record.update(
                ended=datetime.now().isoformat(timespec="seconds"),
                finish={"reason": reason, "detail": detail},
                raw=raw.name,
                summary=asdict(summary),
                stream_stats=asdict(stats) if stats else None,
                budget={
                    "granted_mj": round(budget.total_mj, 6),
                    "per_position_mj": [round(d, 6) for d in budget.dose_mj],
                    "reductions": budget.reductions,
                    "refusals": budget.refusals,
                },
                modes=(
                    {
                        site.name: state.modes
                        for site, state in zip(sites, policy.positions, strict=True)
                    }
                    if isinstance(policy, EventDrivenPolicy)
                    else None
                ),
                workers=[
                    hello.model_dump(
                        include={"worker_id", "device", "credits", "models"}
                    )
                    for hello in (server.workers_seen if server is not None else [])
                ],
            )
            write_json(folder / "run.json", record)
            outcome["summary"] = summary

        # Each step runs even if one before it fails or is interrupted.
        with contextlib.ExitStack() as closing:
            closing.callback(write_record)
            closing.callback(decisions.close)
            closing.callback(intake.close)
            if server is not None:
                closing.callback(server.close, drain_s=plan.stream.drain_s)
    return outcome["summary"]


def _status(
    acq: _Acquisition,
    server: FrameServer | None,
    ledger: FrameLedger,
    source: EventSource,
    budget: LightBudget,
) -> RunStatus:
    elapsed = time.monotonic() - acq.started
    return RunStatus(
        frames=acq.frames,
        elapsed_s=elapsed,
        frames_per_s=acq.frames / elapsed if elapsed > 0 else 0.0,
        stream=server.stats if server is not None else None,
        latency_p50_ms=ledger.latency_ms(0.5),
        positions=tuple(
            PositionStatus(
                name=site.name,
                mode="done" if p in source.exhausted else source.policy.visit(p).mode,
                frames=acq.per_position[p],
                dose_mj=budget.dose_mj[p],
                divisions=acq.divisions[p],
            )
            for p, site in enumerate(acq.sites)
        ),
    )
