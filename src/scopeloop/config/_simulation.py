"""Options of an offline simulated acquisition (`scopeloop simulate`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["OutputFormat", "SimulationOptions"]


class OutputFormat(StrEnum):
    """Container of the raw stream."""

    OME_TIFF = "ome-tiff"
    OME_ZARR = "ome-zarr"

    @property
    def suffix(self) -> str:
        """File name suffix that ome-writers recognises."""
        return ".ome.tiff" if self is OutputFormat.OME_TIFF else ".ome.zarr"


class SimulationOptions(BaseModel):
    """A time-lapse acquired on the simulated rig, with ground truth.

    On a replay rig (a configuration with a `ReplayHub`) the frames come from
    a recording and there is no ground truth. There, `positions`,
    `interval_s`, `laser_power_mw` and `exposure_ms` left unset default to the
    recording's (all its positions, its frame interval, the recorded power,
    the recorded exposure when the hub knows it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(1, ge=1, le=1, description="Version of this options schema.")
    out: Path = Field(
        description="Folder the run is written to (created; must be empty)."
    )
    config: Path | None = Field(
        None, description="Micro-Manager configuration; default: the bundled demo.cfg."
    )
    recording: Path | None = Field(
        None,
        description="Recording to replay: sets the ReplayHub's Recording property "
        "(the configuration must load a ReplayHub).",
    )
    frames: int = Field(36, ge=1, le=100_000, description="Number of time points.")
    interval_s: float = Field(
        600.0, ge=0, le=86_400, description="Simulated seconds between time points."
    )
    positions: int = Field(
        2, ge=1, le=400, description="Stage positions, spread on a grid over the slide."
    )
    position_spacing_um: float = Field(
        400.0, gt=0, le=50_000, description="Distance between neighbouring positions."
    )
    z_planes: int = Field(
        1, ge=1, le=200, description="Planes per z-stack (1: no stack)."
    )
    z_step_um: float = Field(1.0, gt=0, le=100, description="Step between z planes.")
    exposure_ms: float = Field(50.0, gt=0, le=60_000, description="Camera exposure.")
    laser_power_mw: float = Field(2.0, ge=0, le=10_000, description="Laser power.")
    speedup: float = Field(
        3600.0,
        gt=0,
        le=1e7,
        description="Simulated seconds per wall-clock second when pacing the run.",
    )
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="Seed of the culture and noise."
    )
    output_format: OutputFormat = Field(
        OutputFormat.OME_TIFF, description="Container of the raw stream."
    )

    @property
    def wall_interval_s(self) -> float:
        """Wall-clock seconds between time points."""
        return self.interval_s / self.speedup
