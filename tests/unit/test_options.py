"""Validated settings: SimulationOptions and CultureParams reject bad values clearly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from scopeloop.config import OutputFormat, SimulationOptions
from scopeloop.sim import CultureParams

if TYPE_CHECKING:
    from pathlib import Path

BAD_OPTIONS = [
    pytest.param({"frames": 0}, "frames", id="zero-frames"),
    pytest.param({"exposure_ms": -5.0}, "exposure_ms", id="negative-exposure"),
    pytest.param({"exposure_ms": 0.0}, "exposure_ms", id="zero-exposure"),
    pytest.param({"positions": 0}, "positions", id="zero-positions"),
    pytest.param({"laser_power_mw": -1.0}, "laser_power_mw", id="negative-power"),
    pytest.param({"speedup": 0.0}, "speedup", id="zero-speedup"),
    pytest.param({"output_format": "png"}, "output_format", id="unknown-format"),
    pytest.param({"exposure": 10.0}, "exposure", id="extra-field"),
    pytest.param({"frames": "many"}, "frames", id="not-a-number"),
]


@pytest.mark.parametrize(("change", "field"), BAD_OPTIONS)
def test_bad_simulation_options_name_the_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        SimulationOptions(out=tmp_path, **change)

    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    assert field in str(info.value)


def test_missing_output_folder_is_an_error() -> None:
    with pytest.raises(ValidationError, match="out"):
        SimulationOptions()  # type: ignore[call-arg]


def test_good_options_derive_the_wall_interval_and_suffix(tmp_path: Path) -> None:
    options = SimulationOptions(
        out=tmp_path, interval_s=600, speedup=1200, output_format="ome-zarr"
    )

    assert options.wall_interval_s == pytest.approx(0.5)
    assert options.output_format is OutputFormat.OME_ZARR
    assert options.output_format.suffix == ".ome.zarr"
    assert OutputFormat.OME_TIFF.suffix == ".ome.tiff"
    with pytest.raises(ValidationError):
        options.frames = 3  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("values", "words"),
    [
        pytest.param(
            {"DeathDose_mJ": 10.0, "ArrestDose_mJ": 20.0},
            ["DeathDose_mJ", "ArrestDose_mJ"],
            id="death-before-arrest",
        ),
        pytest.param(
            {"Mitosis_min": 120.0, "CellCycle_h": 1.0},
            ["Mitosis_min", "CellCycle_h"],
            id="mitosis-longer-than-cycle",
        ),
        pytest.param(
            {"Density_per_mm2": -1.0}, ["Density_per_mm2"], id="negative-density"
        ),
        pytest.param({"Seed": -1}, ["Seed"], id="negative-seed"),
        pytest.param({"Brightnes": 1.0}, ["Brightnes"], id="misspelt"),
    ],
)
def test_bad_culture_parameters_are_refused(
    values: dict[str, float], words: list[str]
) -> None:
    with pytest.raises(ValidationError) as info:
        CultureParams(**values)

    for word in words:
        assert word in str(info.value)


def test_culture_parameters_accept_hub_property_names() -> None:
    params = CultureParams(Seed=3, CellCycle_h=12.5)

    assert params.seed == 3
    assert params.cycle_h == 12.5
    assert params.model_dump(by_alias=True)["CellCycle_h"] == 12.5
