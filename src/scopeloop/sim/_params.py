"""Parameters of the simulated culture, with realistic defaults and bounds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CultureParams"]


class CultureParams(BaseModel):
    """A culture of H2B-GFP-like nuclei on a slide, and how it reacts to light.

    The aliases are the property names of the `SimHub` device, so a hardware
    configuration sets them with `Property,SimHub,<alias>,<value>` lines.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    seed: int = Field(
        0, ge=0, le=2**31 - 1, alias="Seed", description="Random seed of the world."
    )
    slide_width_um: float = Field(
        2000.0,
        ge=100,
        le=100_000,
        alias="SlideWidth_um",
        description="Width of the simulated slide; it wraps around at its edges.",
    )
    slide_height_um: float = Field(
        2000.0,
        ge=100,
        le=100_000,
        alias="SlideHeight_um",
        description="Height of the simulated slide; it wraps around at its edges.",
    )
    density_per_mm2: float = Field(
        600.0,
        ge=0,
        le=20_000,
        alias="Density_per_mm2",
        description="Nuclei per square millimetre at the start.",
    )
    nucleus_diameter_um: float = Field(
        10.0,
        gt=1,
        le=50,
        alias="NucleusDiameter_um",
        description="Mean diameter of a nucleus at birth (G1).",
    )
    nucleus_size_cv: float = Field(
        0.12,
        ge=0,
        le=0.5,
        alias="NucleusSizeCV",
        description="Coefficient of variation of nucleus size between cells.",
    )
    cycle_h: float = Field(
        20.0, gt=0.5, le=200, alias="CellCycle_h", description="Mean cell-cycle length."
    )
    cycle_cv: float = Field(
        0.1,
        ge=0,
        le=0.5,
        alias="CellCycleCV",
        description="Coefficient of variation of the cycle length between cells.",
    )
    mitosis_min: float = Field(
        45.0,
        gt=1,
        le=600,
        alias="Mitosis_min",
        description="Duration of mitosis, from prophase to the end of anaphase.",
    )
    motility_um_per_min: float = Field(
        0.3,
        ge=0,
        le=20,
        alias="Motility_um_per_min",
        description="RMS speed of the persistent random walk of each cell.",
    )
    persistence_min: float = Field(
        20.0,
        gt=0,
        le=1000,
        alias="Persistence_min",
        description="Time over which a cell keeps its direction of motion.",
    )
    drift_x_um_per_h: float = Field(
        1.0,
        ge=-1000,
        le=1000,
        alias="DriftX_um_per_h",
        description="Drift of the whole sample along x (stage creep, flow).",
    )
    drift_y_um_per_h: float = Field(
        0.5,
        ge=-1000,
        le=1000,
        alias="DriftY_um_per_h",
        description="Drift of the whole sample along y.",
    )
    brightness: float = Field(
        0.25,
        gt=0,
        le=1000,
        alias="Brightness",
        description=(
            "Photons reaching a 0.5 um pixel (in the sample) from a G1 nucleus, "
            "per mW of laser power and per ms of exposure, before bleaching; a "
            "pixel's share scales with the area it sees."
        ),
    )
    brightness_cv: float = Field(
        0.2,
        ge=0,
        le=1,
        alias="BrightnessCV",
        description="Coefficient of variation of expression level between cells.",
    )
    texture: float = Field(
        0.2,
        ge=0,
        le=1,
        alias="Texture",
        description="Relative contrast of interphase chromatin texture.",
    )
    background: float = Field(
        0.004,
        ge=0,
        le=100,
        alias="Background",
        description="Autofluorescence photons per 0.5 um pixel per mW per ms.",
    )
    bleach_dose_mj: float = Field(
        150.0,
        gt=0,
        le=1e9,
        alias="BleachDose_mJ",
        description="Delivered dose after which fluorescence falls to 1/e.",
    )
    arrest_dose_mj: float = Field(
        20.0,
        gt=0,
        le=1e9,
        alias="ArrestDose_mJ",
        description="Cumulative dose past which a cell no longer enters mitosis.",
    )
    death_dose_mj: float = Field(
        60.0,
        gt=0,
        le=1e9,
        alias="DeathDose_mJ",
        description="Cumulative dose past which a cell dies (pyknosis).",
    )
    depth_of_field_um: float = Field(
        1.5,
        gt=0,
        le=100,
        alias="DepthOfField_um",
        description="Defocus at which blur reaches about one nucleus-edge width.",
    )
    sample_z_um: float = Field(
        0.0,
        ge=-10_000,
        le=10_000,
        alias="SampleZ_um",
        description="Focus position at which the nuclei are sharp.",
    )

    @model_validator(mode="after")
    def _doses_ordered(self) -> CultureParams:
        if self.death_dose_mj <= self.arrest_dose_mj:
            raise ValueError(
                f"DeathDose_mJ ({self.death_dose_mj}) must be larger than "
                f"ArrestDose_mJ ({self.arrest_dose_mj})"
            )
        if self.mitosis_min / 60 >= self.cycle_h:
            raise ValueError(
                f"Mitosis_min ({self.mitosis_min}) must be shorter than the cell "
                f"cycle CellCycle_h ({self.cycle_h} h)"
            )
        return self
