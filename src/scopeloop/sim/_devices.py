"""Micro-Manager devices of the simulated rig (pure Python, for `UniMMCore`).

A hardware configuration loads them with `#py pyDevice,<Label>,scopeloop.sim,<Class>`
lines. `SimHub` owns the simulated world; every other device names it as its
parent hub (`#py Parent,<Label>,<HubLabel>`) and acts on that world:
the laser and shutter decide how much light reaches the sample, the stages
choose where and at what focus the camera looks, and the camera turns the
photons into 16-bit frames.

The laser is triggered by the camera (as on most rigs with TTL-driven
lasers): light reaches the sample only during an exposure, and only while the
shutter is open. `UniMMCore` does not operate Python shutters in auto-shutter
mode, so the demo configuration keeps the shutter open and auto-shutter off.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

import numpy as np
from pydantic import TypeAdapter, ValidationError
from pymmcore_plus.experimental.unicore import (
    GenericDevice,
    HubDevice,
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    XYStageDevice,
    pymm_property,
)

from scopeloop.errors import ConfigError, DeviceError, LimitError

from ._params import CultureParams
from ._sensor import SensorModel
from ._world import ClockMode, LightPath, World

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from numpy.typing import DTypeLike, NDArray
    from pydantic.fields import FieldInfo

__all__ = [
    "SimCamera",
    "SimFocus",
    "SimHub",
    "SimLaser",
    "SimShutter",
    "SimXYStage",
    "world_of",
]

_H = TypeVar("_H", bound=HubDevice)


@dataclass(slots=True)
class _Rig:
    """Shared state of the devices under one hub: the light path and the hub."""

    light: LightPath = field(default_factory=LightPath)
    hub: HubDevice | None = None
    """The hub: a `SimHub`, or another hub that shares the light path (replay)."""


# Rigs by (core, hub label). Devices are built with no arguments and see only a
# narrow proxy of their core, so they meet through this table. Peripherals may
# set their state before the hub is initialised; the camera needs the hub.
_RIGS: dict[tuple[int, str], _Rig] = {}
_RIGS_LOCK = threading.Lock()


def _core_key(device: Any) -> int:
    # Every device of one core shares that core's signal instances.
    return id(device.core.events.propertyChanged)


def _rig(key: int, hub_label: str) -> _Rig:
    with _RIGS_LOCK:
        return _RIGS.setdefault((key, hub_label), _Rig())


def labels_of(core: Any, cls: type) -> list[str]:
    """Labels of the Python devices of class `cls` that `core` has loaded."""
    return [
        label
        for label in core.getLoadedDevices()
        if core.isPyDevice(label) and core.getDeviceName(label) == cls.__name__
    ]


def hub_of(core: Any, cls: type[_H], hub_label: str | None = None) -> _H:
    """The loaded, initialised hub of class `cls` (SimHub, ReplayHub) of `core`.

    Parameters
    ----------
    core
        A `UniMMCore` that loaded a hub of class `cls`.
    cls
        The hub's class.
    hub_label
        The hub's label; may be omitted when only one such hub is loaded.

    """
    name = cls.__name__
    labels = [hub_label] if hub_label else labels_of(core, cls)
    if len(labels) != 1:
        raise DeviceError(
            f"expected one {name} in the loaded configuration, found {len(labels)}"
        )
    hub = _rig(id(core.events.propertyChanged), labels[0]).hub
    if not isinstance(hub, cls):
        raise DeviceError(f"{labels[0]!r} is not a loaded, initialised {name}")
    return hub


def world_of(core: Any, hub_label: str | None = None) -> World:
    """The simulated `World` behind a core loaded with a scopeloop.sim config.

    Parameters
    ----------
    core
        A `UniMMCore` that loaded a SimHub.
    hub_label
        The hub's label; may be omitted when only one SimHub is loaded.

    """
    return hub_of(core, SimHub, hub_label).world


class _RigHub(HubDevice):
    """Base of the hubs (SimHub, ReplayHub): owns the rig its peripherals share.

    Initialising enters the hub in the rig table, where its peripherals find it
    and the light path; shutting down removes it.
    """

    PERIPHERALS: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self._rig = _Rig()

    def get_installed_peripherals(self) -> Sequence[tuple[str, str]]:
        return self.PERIPHERALS

    def initialize(self) -> None:
        self._rig = _rig(_core_key(self), self.get_label())
        self._rig.hub = self

    def shutdown(self) -> None:
        with _RIGS_LOCK:
            _RIGS.pop((_core_key(self), self.get_label()), None)


class _OnWorld:
    """Mixin: a peripheral of a SimHub, sharing its light path and world."""

    _rig_of: tuple[str, _Rig] | None = None  # (parent label, its rig)

    @property
    def rig(self) -> _Rig:
        parent = self.get_parent_label()  # type: ignore[attr-defined]
        if self._rig_of is not None and self._rig_of[0] == parent:
            return self._rig_of[1]  # the lookup below is slow for every frame
        if not parent:
            label = self.get_label()  # type: ignore[attr-defined]
            raise DeviceError(
                f"device {label!r} has no parent SimHub: add "
                f"'#py Parent,{label},<SimHub label>' to the configuration"
            )
        self._rig_of = (parent, _rig(_core_key(self), parent))
        return self._rig_of[1]

    @property
    def light(self) -> LightPath:
        return self.rig.light

    def parent_hub(self, cls: type[_H]) -> _H:
        """The parent hub, which must be a loaded, initialised `cls`."""
        hub = self.rig.hub
        if not isinstance(hub, cls):
            raise DeviceError(
                f"device {self.get_label()!r}: its parent hub "  # type: ignore[attr-defined]
                f"{self.get_parent_label()!r} is not a loaded, "  # type: ignore[attr-defined]
                f"initialised {cls.__name__}"
            )
        return hub

    @property
    def world(self) -> World:
        return self.parent_hub(SimHub).world


class _RigCamera(_OnWorld, SimpleCameraDevice):
    """Base of the rig's cameras (SimCamera, ReplayCamera): exposure in ms."""

    EXPOSURE_LIMITS_MS: ClassVar[tuple[float, float]] = (0.01, 60_000.0)

    def __init__(self) -> None:
        super().__init__()
        self._exposure_ms = 50.0
        self.set_property_limits("Exposure", self.EXPOSURE_LIMITS_MS)

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        # core.setExposure() reaches here without the property's limits.
        value = float(exposure)
        low, high = self.EXPOSURE_LIMITS_MS
        if not low <= value <= high:
            raise LimitError(
                f"{self.get_label()}: Exposure={exposure!r} ms is outside "
                f"{low}..{high} ms"
            )
        self._exposure_ms = value


def _culture_limits(info: FieldInfo) -> tuple[float, float] | None:
    bounds: dict[str, float] = {}
    for meta in info.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if (value := getattr(meta, attr, None)) is not None:
                bounds["low" if attr[0] == "g" else "high"] = float(value)
    if len(bounds) < 2:
        return None
    return bounds["low"], bounds["high"]


@cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    """Validator of one culture parameter on its own (type and bounds)."""
    info = CultureParams.model_fields[name]
    return TypeAdapter(Annotated[info.annotation, *info.metadata])  # type: ignore[arg-type]


def _register_culture_properties(hub: SimHub) -> None:
    for name, info in CultureParams.model_fields.items():
        assert info.alias is not None

        def getter(dev: SimHub, n: str = name) -> Any:
            return dev._values[n]

        def setter(dev: SimHub, value: Any, n: str = name) -> None:
            dev.set_culture_parameter(n, value)

        hub.register_property(
            name=info.alias,
            getter=getter,
            setter=setter,
            limits=_culture_limits(info),
            property_type=int if info.annotation is int else float,
        )


class SimHub(_RigHub):
    """The simulated world: a culture of nuclei, its clock and ground truth.

    Culture parameters (Seed, CellCycle_h, Density_per_mm2, ...) can be set until
    the world starts, at the first use by another device.
    """

    PERIPHERALS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("SimCamera", "Camera imaging the culture"),
        ("SimLaser", "Excitation laser (power in mW)"),
        ("SimShutter", "Shutter in the excitation path"),
        ("SimXYStage", "XY stage over the slide"),
        ("SimFocus", "Focus drive (z)"),
    )

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[str, Any] = CultureParams().model_dump()
        self._world: World | None = None
        self._speedup = 1.0
        self._clock = ClockMode.WALL
        self._start_lock = threading.Lock()
        _register_culture_properties(self)

    # -- lifecycle ----------------------------------------------------------

    def shutdown(self) -> None:
        super().shutdown()
        self._world = None

    @property
    def params(self) -> CultureParams:
        """The culture parameters (checked together)."""
        try:
            return CultureParams.model_validate(self._values)
        except ValidationError as e:
            msg = "; ".join(err["msg"] for err in e.errors())
            raise ConfigError(f"{self.get_label()}: {msg}") from None

    @property
    def world(self) -> World:
        """The world, started on first use with the current parameters."""
        with self._start_lock:
            if self._world is None:
                self._world = World(
                    self.params,
                    speedup=self._speedup,
                    clock=self._clock,
                    light=self._rig.light,
                )
            return self._world

    def set_culture_parameter(self, name: str, value: Any) -> None:
        """Change one culture parameter; refused once the world has started.

        The value is checked on its own here; checks between parameters (e.g.
        DeathDose_mJ > ArrestDose_mJ) run when the world starts, so the order
        of the configuration lines does not matter.
        """
        info = CultureParams.model_fields[name]
        if self._world is not None:
            raise ConfigError(
                f"{self.get_label()}: culture parameters are fixed once the world "
                f"has started; cannot set {info.alias}={value!r} (reload the "
                "configuration to start a new culture)"
            )
        try:
            checked = _field_adapter(name).validate_python(value)
        except ValidationError as e:
            msg = "; ".join(err["msg"] for err in e.errors())
            raise ConfigError(
                f"{self.get_label()}: {info.alias}={value!r}: {msg}"
            ) from None
        self._values[name] = checked

    # -- clock properties ---------------------------------------------------

    @pymm_property(limits=(1e-3, 1e7))
    def SpeedUp(self) -> float:
        """Simulated seconds per wall-clock second (Clock=Wall)."""
        return self._speedup

    @SpeedUp.setter
    def _set_speedup(self, value: float) -> None:
        self._speedup = float(value)
        if self._world is not None:
            self._world.speedup = self._speedup

    @pymm_property(allowed_values=[m.value for m in ClockMode])
    def Clock(self) -> str:
        """`Wall`: time runs with the wall clock; `Manual`: set SimTime_s."""
        return self._clock.value

    @Clock.setter
    def _set_clock(self, value: str) -> None:
        self._clock = ClockMode(value)
        if self._world is not None:
            self._world.clock = self._clock

    @pymm_property(property_type=float)
    def SimTime_s(self) -> float:
        """Current simulated time; settable (forward only) with Clock=Manual."""
        # Reading must not start the world: the core reads every property
        # while loading, before the culture parameters are final.
        return self._world.now() if self._world is not None else 0.0

    @SimTime_s.setter
    def _set_sim_time(self, value: float) -> None:
        self.world.set_time(float(value))

    @pymm_property(is_read_only=True)
    def DeliveredDose_mJ(self) -> float:
        """Total light dose delivered to the sample so far."""
        return self.world.delivered_dose_mj if self._world else 0.0

    @pymm_property(is_read_only=True)
    def Divisions(self) -> int:
        """Number of divisions on the whole slide so far."""
        return len(self._world.culture.divisions) if self._world else 0


class SimLaser(_OnWorld, GenericDevice):
    """Excitation laser; the power setpoint is limited to 0..MaxPower_mW."""

    def __init__(self) -> None:
        super().__init__()
        self._max_mw = 100.0
        self._power_mw = 0.0
        self.register_property(
            "PowerSetpoint_mW",
            getter=SimLaser._get_power,
            setter=SimLaser._set_power,
            limits=(0.0, self._max_mw),
            property_type=float,
        )

    def _get_power(self) -> float:
        return self._power_mw

    def _set_power(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= self._max_mw:  # also guards direct calls
            raise LimitError(
                f"{self.get_label()}: PowerSetpoint_mW={value!r} is outside "
                f"0..MaxPower_mW ({self._max_mw} mW)"
            )
        self._power_mw = value
        self.light.laser_power_mw = value

    @pymm_property(limits=(0.0, 10_000.0))
    def MaxPower_mW(self) -> float:
        """Highest power the setpoint accepts (a safety limit of the rig)."""
        return self._max_mw

    @MaxPower_mW.setter
    def _set_max(self, value: float) -> None:
        if self._power_mw > float(value):
            raise LimitError(
                f"{self.get_label()}: cannot lower MaxPower_mW to {value!r} below the "
                f"current setpoint ({self._power_mw} mW)"
            )
        self._max_mw = float(value)
        self.set_property_limits("PowerSetpoint_mW", (0.0, self._max_mw))

    @pymm_property(is_read_only=True)
    def Wavelength_nm(self) -> float:
        """Excitation wavelength."""
        return 488.0


class SimShutter(_OnWorld, ShutterDevice):
    """Shutter in the excitation path: no light reaches the sample when closed."""

    def get_open(self) -> bool:
        return self.light.shutter_open

    def set_open(self, open: bool) -> None:
        self.light.shutter_open = bool(int(open))

    @pymm_property(limits=(0, 1), property_type=int)
    def State(self) -> int:
        """1 when open, 0 when closed (usable in configuration groups)."""
        return int(self.light.shutter_open)

    @State.setter
    def _set_state(self, value: int) -> None:
        if float(value) not in (0.0, 1.0):
            raise ConfigError(
                f"{self.get_label()}: State must be 0 or 1, got {value!r}"
            )
        self.set_open(bool(int(float(value))))


class SimXYStage(_OnWorld, XYStageDevice):
    """XY stage; the slide wraps around, so any position shows cells."""

    LIMIT_UM: ClassVar[float] = 50_000.0

    def set_position_um(self, x: float, y: float) -> None:
        x, y = float(x), float(y)
        if abs(x) > self.LIMIT_UM or abs(y) > self.LIMIT_UM:
            raise LimitError(
                f"{self.get_label()}: position ({x}, {y}) um is outside the travel "
                f"range +-{self.LIMIT_UM} um"
            )
        check = getattr(self.rig.hub, "check_stage", None)
        if check is not None:  # a replay hub knows where its recording lies
            check(x, y)
        self.light.stage_x_um, self.light.stage_y_um = x, y

    def get_position_um(self) -> tuple[float, float]:
        return self.light.stage_x_um, self.light.stage_y_um

    def home(self) -> None:
        self.set_position_um(0.0, 0.0)

    def stop(self) -> None:
        """Moves are instantaneous; nothing to stop."""

    def set_origin_x(self) -> None:
        raise DeviceError(f"{self.get_label()}: setting the origin is not supported")

    def set_origin_y(self) -> None:
        raise DeviceError(f"{self.get_label()}: setting the origin is not supported")


class SimFocus(_OnWorld, StageDevice):
    """Focus drive: nuclei are sharp at the hub's SampleZ_um and blur away from it."""

    LIMIT_UM: ClassVar[float] = 10_000.0

    def set_position_um(self, val: float) -> None:
        val = float(val)
        if abs(val) > self.LIMIT_UM:
            raise LimitError(
                f"{self.get_label()}: z={val} um is outside +-{self.LIMIT_UM} um"
            )
        self.light.focus_um = val

    def get_position_um(self) -> float:
        return self.light.focus_um

    def home(self) -> None:
        self.set_position_um(0.0)

    def stop(self) -> None:
        """Moves are instantaneous; nothing to stop."""

    def set_origin(self) -> None:
        raise DeviceError(f"{self.get_label()}: setting the origin is not supported")


class SimCamera(_RigCamera):
    """16-bit camera with shot noise, read noise, offset, gain and saturation."""

    def __init__(self) -> None:
        super().__init__()
        self._binning = 1
        self._width = 512
        self._height = 512
        self._pixel_um = 0.5
        self._sensor = SensorModel()
        self.set_property_limits("Binning", (1, 8))
        self.set_property_limits("Offset", (0.0, 10_000.0))
        self.set_property_limits("Gain", (0.01, 100.0))

    # -- standard properties ------------------------------------------------

    def get_binning(self) -> int:
        return self._binning

    def set_binning(self, value: int) -> None:
        value = int(value)
        if value not in (1, 2, 4, 8) or self._width % value or self._height % value:
            raise ConfigError(
                f"{self.get_label()}: Binning={value} must be 1, 2, 4 or 8 and divide "
                f"the sensor ({self._width}x{self._height})"
            )
        self._binning = value

    def get_offset(self) -> float:
        """Grey level of zero electrons."""
        return self._sensor.offset_adu

    def set_offset(self, value: float) -> None:
        self._replace_sensor(offset_adu=float(value))

    def get_gain(self) -> float:
        """Grey levels per electron."""
        return self._sensor.gain_adu_per_e

    def set_gain(self, value: float) -> None:
        self._replace_sensor(gain_adu_per_e=float(value))

    def _replace_sensor(self, **changes: float) -> None:
        self._sensor = dataclasses.replace(self._sensor, **changes)

    @pymm_property(limits=(0.0, 100.0))
    def ReadNoise_e(self) -> float:
        """RMS read noise in electrons."""
        return self._sensor.read_noise_e

    @ReadNoise_e.setter
    def _set_read_noise(self, value: float) -> None:
        self._replace_sensor(read_noise_e=float(value))

    @pymm_property(limits=(0.01, 1.0))
    def QuantumEfficiency(self) -> float:
        """Fraction of photons that become electrons."""
        return self._sensor.quantum_efficiency

    @QuantumEfficiency.setter
    def _set_qe(self, value: float) -> None:
        self._replace_sensor(quantum_efficiency=float(value))

    @pymm_property(limits=(100.0, 1e7))
    def FullWell_e(self) -> float:
        """Electrons at which a pixel saturates."""
        return self._sensor.full_well_e

    @FullWell_e.setter
    def _set_full_well(self, value: float) -> None:
        self._replace_sensor(full_well_e=float(value))

    @pymm_property(limits=(0.0, 1000.0))
    def DarkCurrent_e_per_s(self) -> float:
        """Dark current in electrons per pixel per second."""
        return self._sensor.dark_e_per_s

    @DarkCurrent_e_per_s.setter
    def _set_dark(self, value: float) -> None:
        self._replace_sensor(dark_e_per_s=float(value))

    @pymm_property(limits=(8, 8192), property_type=int)
    def SensorWidth(self) -> int:
        """Sensor width in (unbinned) pixels."""
        return self._width

    @SensorWidth.setter
    def _set_width(self, value: int) -> None:
        self._width = self._checked_size(value)

    @pymm_property(limits=(8, 8192), property_type=int)
    def SensorHeight(self) -> int:
        """Sensor height in (unbinned) pixels."""
        return self._height

    @SensorHeight.setter
    def _set_height(self, value: int) -> None:
        self._height = self._checked_size(value)

    def _checked_size(self, value: float) -> int:
        size = int(value)
        if size != value or size % self._binning:
            raise ConfigError(
                f"{self.get_label()}: sensor size {value!r} must be a whole number of "
                f"pixels divisible by the binning ({self._binning})"
            )
        self.clear_roi()
        return size

    @pymm_property(limits=(0.01, 100.0))
    def PixelSize_um(self) -> float:
        """Size of one unbinned pixel in the sample plane.

        The core's pixel size comes from the configuration's PixelSize_um
        preset: keep the two equal.
        """
        return self._pixel_um

    @PixelSize_um.setter
    def _set_pixel(self, value: float) -> None:
        self._pixel_um = float(value)

    # -- imaging ------------------------------------------------------------

    def sensor_shape(self) -> tuple[int, int]:
        return (self._height // self._binning, self._width // self._binning)

    def dtype(self) -> DTypeLike:
        return np.uint16

    def snap(self, buffer: NDArray[np.uint16]) -> Mapping[str, Any]:
        world = self.world
        photons, background, record = world.expose(
            shape=self.sensor_shape(),
            binning=self._binning,
            pixel_um=self._pixel_um,
            exposure_ms=self._exposure_ms,
        )
        self._sensor.read(
            photons, background, self._exposure_ms, world.noise_rng, buffer
        )
        return {
            "SimFrame": str(record.index),
            "SimTime_s": f"{record.time_s:.3f}",
            "SimDose_mJ": f"{record.dose_mj:.6f}",
        }
