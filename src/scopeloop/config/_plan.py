"""A session plan: what the controller acquires, read from YAML and validated.

Example (`plans/demo.yaml`)::

    version: 1
    name: demo
    grid: {rows: 1, columns: 2, spacing_um: 400}
    illumination: {exposure_ms: 50, laser_power_mw: 2}
    time: {interval_s: 2, frames: 30}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scopeloop.errors import ConfigError

from ._policy import BasePolicySettings, BudgetSettings, PolicySettings
from ._simulation import OutputFormat

__all__ = [
    "GridPlan",
    "Illumination",
    "OutputSettings",
    "PlanPosition",
    "PropertySetting",
    "SessionPlan",
    "StreamSettings",
    "TimePlan",
    "ZPlan",
    "load_plan",
    "save_plan",
]

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\w.\- ]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlanPosition(_Model):
    """A stage position."""

    name: Name | None = Field(None, description="Name; default p000, p001, ...")
    x_um: float = Field(ge=-1e6, le=1e6, description="Stage x.")
    y_um: float = Field(ge=-1e6, le=1e6, description="Stage y.")
    z_um: float | None = Field(
        None, ge=-1e5, le=1e5, description="Focus; default: the focus at start."
    )


class GridPlan(_Model):
    """Positions on a rectangular grid centred on a point."""

    rows: int = Field(1, ge=1, le=100, description="Rows of the grid.")
    columns: int = Field(1, ge=1, le=100, description="Columns of the grid.")
    spacing_um: float = Field(gt=0, le=1e5, description="Distance between neighbours.")
    center_x_um: float = Field(0.0, ge=-1e6, le=1e6, description="Centre x.")
    center_y_um: float = Field(0.0, ge=-1e6, le=1e6, description="Centre y.")

    def positions(self) -> list[PlanPosition]:
        """The grid as positions, row by row."""
        return [
            PlanPosition(
                name=f"r{r:02d}c{c:02d}",
                x_um=self.center_x_um + (c - (self.columns - 1) / 2) * self.spacing_um,
                y_um=self.center_y_um + (r - (self.rows - 1) / 2) * self.spacing_um,
            )
            for r in range(self.rows)
            for c in range(self.columns)
        ]


class PropertySetting(_Model):
    """A device property to set before acquiring (e.g. a simulator's speed-up)."""

    device: Name = Field(description="Device label.")
    property: Name = Field(description="Property name.")
    value: str | float | int = Field(description="Value to set.")


class Illumination(_Model):
    """Exposure, laser power and channel of every frame."""

    exposure_ms: float = Field(50.0, ge=0.01, le=60_000, description="Camera exposure.")
    laser_power_mw: float = Field(
        1.0, ge=0, le=10_000, description="Laser power; the rig's limit applies too."
    )
    laser_device: Name = Field("Laser", description="Label of the laser device.")
    laser_property: Name = Field(
        "PowerSetpoint_mW", description="Property holding the laser power in mW."
    )
    channel_group: Name | None = Field(
        None, description="Configuration group of the channel, e.g. 'Channel'."
    )
    channel: Name | None = Field(None, description="Preset of that group, e.g. 'GFP'.")

    @model_validator(mode="after")
    def _channel_pair(self) -> Illumination:
        if (self.channel is None) != (self.channel_group is None):
            raise ValueError(
                "channel and channel_group go together: give both or none, got "
                f"channel={self.channel!r}, channel_group={self.channel_group!r}"
            )
        return self


class TimePlan(_Model):
    """The base time plan: an interval, for a number of frames or a duration."""

    interval_s: float = Field(ge=0, le=86_400, description="Seconds between visits.")
    frames: int | None = Field(
        None, ge=1, le=10_000_000, description="Visits per position."
    )
    duration_s: float | None = Field(
        None, gt=0, le=30 * 86_400, description="Stop after this long."
    )

    @model_validator(mode="after")
    def _one_end(self) -> TimePlan:
        if (self.frames is None) == (self.duration_s is None):
            got = (
                "neither"
                if self.frames is None
                else f"frames={self.frames} and duration_s={self.duration_s}"
            )
            raise ValueError(f"give exactly one of frames or duration_s, got {got}")
        return self

    @property
    def visits(self) -> int | None:
        """Visits per position, if the plan has a fixed number."""
        if self.frames is not None:
            return self.frames
        if self.interval_s > 0 and self.duration_s is not None:
            return int(self.duration_s // self.interval_s) + 1
        return None


class ZPlan(_Model):
    """A z-stack centred on each position's focus."""

    planes: int = Field(1, ge=1, le=500, description="Planes per stack.")
    step_um: float = Field(1.0, gt=0, le=100, description="Step between planes.")

    def offsets_um(self) -> list[float]:
        """Offsets of the planes from the position's focus."""
        half = (self.planes - 1) / 2
        return [(i - half) * self.step_um for i in range(self.planes)]


class OutputSettings(_Model):
    """Where runs go."""

    root: Path = Field(Path("runs"), description="Folder that holds run folders.")
    format: OutputFormat = Field(OutputFormat.OME_TIFF, description="Raw container.")


class StreamSettings(_Model):
    """The frame stream to workers."""

    worker: str = Field(
        "tcp://127.0.0.1:5555",
        min_length=1,
        description="Address the controller listens on for workers, or 'none'.",
    )
    max_queue: int = Field(
        16, ge=1, le=1024, description="Frames waiting for a worker, at most."
    )
    worker_timeout_s: float = Field(
        3.0, gt=0, le=600, description="Silence after which a worker is dropped."
    )
    wait_for_worker_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Before the first frame, wait this long for a worker's hello.",
    )
    drain_s: float = Field(
        2.0, ge=0, le=600, description="Wait for results in flight at the end."
    )

    @property
    def enabled(self) -> bool:
        """Whether frames are streamed at all."""
        return self.worker.lower() != "none"


class SessionPlan(_Model):
    """Everything a run needs besides the hardware configuration."""

    version: Literal[1] = Field(1, description="Version of the plan format.")
    name: Name = Field(
        "run", description="Name of the plan; run folders start with it."
    )
    positions: tuple[PlanPosition, ...] = Field(
        (), max_length=10_000, description="Stage positions (or give a grid)."
    )
    grid: GridPlan | None = Field(None, description="Positions on a grid instead.")
    illumination: Illumination = Field(default_factory=Illumination)
    time: TimePlan = Field(description="The base time plan.")
    z: ZPlan = Field(default_factory=ZPlan, description="Z-stack at each visit.")
    properties: tuple[PropertySetting, ...] = Field(
        (), max_length=100, description="Device properties set before the run."
    )
    output: OutputSettings = Field(default_factory=OutputSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    policy: PolicySettings = Field(
        default_factory=BasePolicySettings,
        description="How the acquisition reacts to results (default: it does not).",
    )
    budget: BudgetSettings = Field(
        default_factory=BudgetSettings, description="Hard caps on light."
    )

    @model_validator(mode="after")
    def _positions_or_grid(self) -> SessionPlan:
        if self.positions and self.grid is not None:
            raise ValueError(
                f"give positions or a grid, not both, got {len(self.positions)} "
                f"positions and a {self.grid.rows}x{self.grid.columns} grid"
            )
        names = [p.name for p in self.stage_positions()]
        if len(set(names)) != len(names):
            raise ValueError(f"position names must be unique, got {names}")
        cap = self.budget.max_power_mw
        ill = self.illumination
        powers = {"illumination.laser_power_mw": ill.laser_power_mw}
        if self.policy.kind == "event-driven":
            if self.time.duration_s is None:
                raise ValueError(
                    "an event-driven policy needs time.duration_s (how long to "
                    f"watch), got frames={self.time.frames}"
                )
            if self.policy.fast_power_mw is not None:
                powers["policy.fast_power_mw"] = self.policy.fast_power_mw
        for setting in self.properties:
            if (setting.device, setting.property) == (
                ill.laser_device,
                ill.laser_property,
            ):
                raise ValueError(
                    f"properties: {setting.device}.{setting.property} is the laser "
                    "power; set it with illumination.laser_power_mw (the light "
                    "budget checks it there)"
                )
        for field, power in powers.items():
            if power > cap:
                raise ValueError(
                    f"{field} = {power} mW is above budget.max_power_mw = {cap} mW"
                )
        return self

    def stage_positions(self) -> list[PlanPosition]:
        """Positions to visit, named; empty means 'where the stage is'."""
        listed = self.grid.positions() if self.grid is not None else self.positions
        return [
            p if p.name else p.model_copy(update={"name": f"p{i:03d}"})
            for i, p in enumerate(listed)
        ]


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{where}{shown}: {error['msg']}"


def load_plan(path: Path | str) -> SessionPlan:
    """Read and validate a plan file.

    Raises
    ------
    ConfigError
        Naming the file, the field and the bad value, for a missing or
        unreadable file, invalid YAML, or any field out of bounds.

    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"plan {path}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"plan {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"plan {path}: expected a mapping of settings, got {data!r:.60}"
        )
    try:
        return SessionPlan.model_validate(data)
    except ValidationError as e:
        details = "; ".join(_describe(err) for err in e.errors())  # type: ignore[arg-type]
        raise ConfigError(f"plan {path}: {details}") from None


def save_plan(plan: SessionPlan, path: Path) -> None:
    """Write `plan` as YAML that `load_plan` reads back to the same plan."""
    path.write_text(yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False))
