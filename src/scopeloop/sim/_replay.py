"""A replay rig: a recording played back as a live camera (pure Python, `UniMMCore`).

`ReplayHub` opens a recording (TIFF/OME-TIFF stack, OME-Zarr, or a scopeloop
run folder; see `scopeloop.storage.read_recording`) and keeps the replay clock;
`ReplayCamera` serves the frame recorded at the current replay time, at the
position the stage is at. The laser, shutter and stages are the simulated
rig's own (`SimLaser`, `SimShutter`, `SimXYStage`, `SimFocus`), sharing the
hub's light path exactly as on the demo rig.

Lower light from brighter data: the camera turns the recorded grey levels into
electrons with its `Offset` and `Gain`, keeps each electron with probability
p = laser power / `RecordedPower_mW` (x exposure / `RecordedExposure_ms` when
that is set), binomially, and adds fresh Gaussian read noise so that the total
read noise stays `ReadNoise_e`. At p >= 1 the recorded frame is returned
unchanged: replay cannot add signal, and says so once in the log.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pymmcore_plus.experimental.unicore import pymm_property

from scopeloop.errors import ConfigError, DeviceError
from scopeloop.storage import read_recording

from ._devices import _RigCamera, _RigHub, hub_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from numpy.typing import DTypeLike, NDArray

    from scopeloop.storage import Recording

__all__ = ["ReplayCamera", "ReplayClock", "ReplayHub", "replay_of"]

logger = logging.getLogger("scopeloop.sim.replay")


class ReplayClock(StrEnum):
    """How the replay time advances."""

    WALL = "Wall"
    """Replay time = wall time since the first frame x SpeedUp."""
    MANUAL = "Manual"
    """Replay time moves only when ReplayTime_s is set."""
    STEP = "Step"
    """Every frame taken at a position advances that position by one frame."""


def replay_of(core: Any, hub_label: str | None = None) -> ReplayHub:
    """The `ReplayHub` device of a core loaded with a replay configuration.

    Parameters
    ----------
    core
        A `UniMMCore` that loaded a ReplayHub.
    hub_label
        The hub's label; may be omitted when only one ReplayHub is loaded.

    """
    return hub_of(core, ReplayHub, hub_label)


class ReplayHub(_RigHub):
    """A recording and its replay clock, shared by the replay rig's devices.

    The recording is opened when the hub initialises (or when `Recording` is
    set afterwards, e.g. by a plan's `properties:`), so a missing, unreadable
    or unsupported recording is refused before any acquisition.
    """

    PERIPHERALS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("ReplayCamera", "Camera serving the recorded frames"),
        ("SimLaser", "Excitation laser (power in mW)"),
        ("SimShutter", "Shutter in the excitation path"),
        ("SimXYStage", "XY stage: its position selects the recorded position"),
        ("SimFocus", "Focus drive (the recording has one plane: z is ignored)"),
    )

    def __init__(self) -> None:
        super().__init__()
        self._path = ""
        self._channel = 0
        self._recording: Recording | None = None
        self._recorded_power_mw = 1.0
        self._recorded_exposure_ms = 0.0
        self._interval_s: float | None = None  # set by the user, else the file's
        self._spacing_um = 1000.0
        self._speedup = 1.0
        self._clock = ReplayClock.WALL
        self._seed = 0
        self._rng = np.random.default_rng([self._seed, 2])
        self._initialised = False
        self._error = ""  # why the recording set in the configuration failed
        self._replay_lock = threading.Lock()
        self.timer: Callable[[], float] = time.perf_counter
        """Wall clock of the replay (replaceable in tests)."""
        self._reset_clock(0.0)

    # -- lifecycle ----------------------------------------------------------

    def initialize(self) -> None:
        super().initialize()
        self._initialised = True
        if self._path:
            try:
                self._load(self._path, self._channel)
            except ConfigError as e:
                # The core logs a failed initialisation and loads on: keep the
                # reason for the camera to give when asked for a frame.
                self._error = str(e)
                raise

    def shutdown(self) -> None:
        super().shutdown()
        self._recording = None

    def _load(self, path: str, channel: int) -> None:
        """Open and check a recording; the hub keeps it only if it is usable."""
        label = self.get_label()
        try:
            recording = read_recording(Path(path), channel=channel)
        except ConfigError as e:
            raise ConfigError(
                f"{label}: Recording={path!r} (Channel={channel}): {e}"
            ) from None
        shapes = {(s.frames.shape[1:], s.frames.dtype.str) for s in recording.series}
        if len(shapes) != 1:
            raise ConfigError(
                f"{label}: Recording={path!r}: its positions differ in frame "
                f"shape or type ({sorted(shapes)}); a camera has one sensor"
            )
        dtype = recording.series[0].frames.dtype
        if dtype not in (np.uint8, np.uint16):
            raise ConfigError(
                f"{label}: Recording={path!r}: frames of type {dtype} are not "
                "supported (expected 8- or 16-bit grey levels)"
            )
        with self._replay_lock:
            self._recording, self._error = recording, ""
            self._path, self._channel = path, channel
            self._rng = np.random.default_rng([self._seed, 2])
            self._reset_clock(0.0)
        logger.info(
            "%s: replaying %s (%d position(s), %d frames each)",
            label,
            recording.path,
            len(recording.series),
            len(recording.series[0]),
        )

    @property
    def recording(self) -> Recording:
        """The open recording; a clear error when none is set."""
        if self._recording is None and self._error:
            raise ConfigError(self._error)
        if self._recording is None:
            raise DeviceError(
                f"{self.get_label()}: no recording to replay: set the Recording "
                f"property (e.g. '#py Property,{self.get_label()},Recording,"
                "<file.tif>' in the configuration, or a plan's properties:)"
            )
        return self._recording

    @property
    def rng(self) -> np.random.Generator:
        """Random generator of the camera's noise (reset by Seed and Recording)."""
        return self._rng

    # -- recording properties ---------------------------------------------

    @pymm_property
    def Recording(self) -> str:
        """Path of the recording (TIFF/OME-TIFF, OME-Zarr, or a run folder)."""
        return self._path

    @Recording.setter
    def _set_recording(self, value: str) -> None:
        path = str(value).strip()
        if not self._initialised:
            self._path = path  # opened when the hub initialises
        elif not path:
            raise ConfigError(f"{self.get_label()}: Recording must not be empty")
        else:
            self._load(path, self._channel)

    @pymm_property(limits=(0, 1000), property_type=int)
    def Channel(self) -> int:
        """Channel replayed from a recording with several (TCYX)."""
        return self._channel

    @Channel.setter
    def _set_channel(self, value: int) -> None:
        if self._initialised and self._path:
            self._load(self._path, int(value))
        else:
            self._channel = int(value)

    @pymm_property(limits=(1e-6, 1e5))
    def RecordedPower_mW(self) -> float:
        """Laser power the recording was made at."""
        return self._recorded_power_mw

    @RecordedPower_mW.setter
    def _set_recorded_power(self, value: float) -> None:
        self._recorded_power_mw = float(value)

    @pymm_property(limits=(0.0, 1e6))
    def RecordedExposure_ms(self) -> float:
        """Exposure the recording was made with; 0: exposure does not scale light."""
        return self._recorded_exposure_ms

    @RecordedExposure_ms.setter
    def _set_recorded_exposure(self, value: float) -> None:
        self._recorded_exposure_ms = float(value)

    @pymm_property(limits=(0.0, 1e7))
    def FrameInterval_s(self) -> float:
        """Time between recorded frames; 0 = from the file (else 1 s)."""
        return self.frame_interval_s

    @FrameInterval_s.setter
    def _set_interval(self, value: float) -> None:
        self._interval_s = float(value) or None

    @property
    def frame_interval_s(self) -> float:
        """The recorded frame interval in use."""
        if self._interval_s is not None:
            return self._interval_s
        recorded = self._recording.frame_interval_s if self._recording else None
        return recorded or 1.0

    @pymm_property(limits=(1e-3, 1e7))
    def PositionSpacing_um(self) -> float:
        """Stage x spacing of positions (position i at x = i x spacing, y = 0).

        Used when the recording does not say where its positions were; a stage
        position selects the recorded position within half a spacing of it.
        """
        return self._spacing_um

    @PositionSpacing_um.setter
    def _set_spacing(self, value: float) -> None:
        self._spacing_um = float(value)

    @pymm_property(limits=(0, 2**31 - 1), property_type=int)
    def Seed(self) -> int:
        """Seed of the camera's noise when replaying at lower power."""
        return self._seed

    @Seed.setter
    def _set_seed(self, value: int) -> None:
        self._seed = int(value)
        self._rng = np.random.default_rng([self._seed, 2])

    @pymm_property(is_read_only=True, property_type=int)
    def Positions(self) -> int:
        """Positions in the recording (0 before one is open)."""
        return len(self._recording.series) if self._recording else 0

    @pymm_property(is_read_only=True, property_type=int)
    def Frames(self) -> int:
        """Frames per position in the recording (0 before one is open)."""
        return len(self._recording.series[0]) if self._recording else 0

    # -- positions ----------------------------------------------------------

    def stage_positions_um(self) -> list[tuple[float, float]]:
        """Stage (x, y) of each recorded position."""
        series = self.recording.series
        if all(s.stage_um is not None for s in series):
            return [s.stage_um for s in series if s.stage_um is not None]
        return [(i * self._spacing_um, 0.0) for i in range(len(series))]

    def check_stage(self, x_um: float, y_um: float) -> None:
        """Refuse a stage move away from every recorded position (once loaded)."""
        if self._recording is not None:
            self.position_at(x_um, y_um)

    def position_at(self, x_um: float, y_um: float) -> int:
        """Index of the recorded position the stage at (x, y) looks at.

        Raises `ConfigError` when no recorded position lies within half a
        `PositionSpacing_um` of the stage.
        """
        where = self.stage_positions_um()
        distances = [math.hypot(x - x_um, y - y_um) for x, y in where]
        nearest = int(np.argmin(distances))
        if distances[nearest] > self._spacing_um / 2:
            index = round(x_um / self._spacing_um)
            raise ConfigError(
                f"{self.get_label()}: stage at ({x_um:g}, {y_um:g}) um maps to "
                f"position index {index}, out of range: the recording has "
                f"{len(where)} position(s), 0..{len(where) - 1}, at "
                + ", ".join(f"({x:g}, {y:g})" for x, y in where)
                + f" um (PositionSpacing_um={self._spacing_um:g})"
            )
        return nearest

    # -- clock --------------------------------------------------------------

    def _reset_clock(self, time_s: float) -> None:
        self._origin: float | None = None  # the wall clock starts at the 1st frame
        self._time_origin = time_s
        self._manual_s = time_s
        self._steps: dict[int, int] = {}
        self._past_end_said = False

    @pymm_property(limits=(1e-3, 1e7))
    def SpeedUp(self) -> float:
        """Recorded seconds replayed per wall-clock second (Clock=Wall)."""
        return self._speedup

    @SpeedUp.setter
    def _set_speedup(self, value: float) -> None:
        with self._replay_lock:
            now = self.now()
            self._speedup = float(value)
            if self._origin is not None:
                self._origin, self._time_origin = self.timer(), now

    @pymm_property(allowed_values=[m.value for m in ReplayClock])
    def Clock(self) -> str:
        """`Wall` (elapsed x SpeedUp), `Manual` (set ReplayTime_s) or `Step`."""
        return self._clock.value

    @Clock.setter
    def _set_clock(self, value: str) -> None:
        with self._replay_lock:
            now = self.now()
            self._clock = ReplayClock(value)
            self._reset_clock(now)

    @pymm_property(property_type=float)
    def ReplayTime_s(self) -> float:
        """Current replay time; settable with Clock=Manual."""
        return self.now()

    @ReplayTime_s.setter
    def _set_replay_time(self, value: float) -> None:
        if self._clock is not ReplayClock.MANUAL:
            raise ConfigError(
                f"{self.get_label()}: ReplayTime_s can be set only with Clock=Manual "
                f"(Clock is {self._clock.value})"
            )
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"{self.get_label()}: ReplayTime_s={value!r} must be >= 0"
            )
        self._manual_s = value

    def now(self) -> float:
        """Current replay time in seconds."""
        if self._clock is ReplayClock.MANUAL:
            return self._manual_s
        if self._origin is None:
            return self._time_origin
        return self._time_origin + (self.timer() - self._origin) * self._speedup

    def next_frame(self, position: int) -> int:
        """Index of the recorded frame to serve now at `position`."""
        frames = len(self.recording.series[position])
        with self._replay_lock:
            if self._clock is ReplayClock.STEP:
                index = self._steps.get(position, 0)
                self._steps[position] = index + 1
            else:
                if self._origin is None:
                    self._origin = self.timer()
                index = math.floor(self.now() / self.frame_interval_s + 1e-9)
            if index >= frames and not self._past_end_said:
                self._past_end_said = True
                logger.warning(
                    "%s: replay time is past the end of the recording (%d frames); "
                    "the last frame is repeated",
                    self.get_label(),
                    frames,
                )
        return min(index, frames - 1)


class ReplayCamera(_RigCamera):
    """Camera serving recorded frames, thinned to lower laser power if asked.

    `Offset` (grey level of no light; default 100 for 16-bit recordings, 0
    for 8-bit) and `Gain` (grey levels per electron) convert grey levels to
    electrons; `ReadNoise_e` is the read noise the recording's camera had.
    """

    def __init__(self) -> None:
        super().__init__()
        self._offset: float | None = None
        self._gain = 1.0
        self._read_noise_e = 1.5
        self._pixel_um = 0.5
        self._unchanged_said = False
        self.set_property_limits("Offset", (0.0, 65_535.0))
        self.set_property_limits("Gain", (0.01, 100.0))
        self.set_property_limits("Binning", (1, 1))

    @property
    def hub(self) -> ReplayHub:
        """The parent ReplayHub."""
        return self.parent_hub(ReplayHub)

    # -- properties ---------------------------------------------------------

    def get_binning(self) -> int:
        return 1

    def set_binning(self, value: int) -> None:
        if int(value) != 1:
            raise ConfigError(f"{self.get_label()}: replay supports Binning=1 only")

    def get_offset(self) -> float:
        """Grey level of zero electrons (default: 100 for 16-bit, 0 for 8-bit)."""
        if self._offset is not None:
            return self._offset
        hub = self.rig.hub
        if isinstance(hub, ReplayHub) and hub._recording is not None:
            return 0.0 if hub.recording.series[0].frames.dtype == np.uint8 else 100.0
        return 100.0

    def set_offset(self, value: float) -> None:
        self._offset = float(value)

    def get_gain(self) -> float:
        """Grey levels per electron."""
        return self._gain

    def set_gain(self, value: float) -> None:
        self._gain = float(value)

    @pymm_property(limits=(0.0, 100.0))
    def ReadNoise_e(self) -> float:
        """RMS read noise in electrons (kept when replaying at lower power)."""
        return self._read_noise_e

    @ReadNoise_e.setter
    def _set_read_noise(self, value: float) -> None:
        self._read_noise_e = float(value)

    @pymm_property(limits=(0.01, 100.0))
    def PixelSize_um(self) -> float:
        """Pixel size of the recording in the sample plane."""
        return self._pixel_um

    @PixelSize_um.setter
    def _set_pixel(self, value: float) -> None:
        self._pixel_um = float(value)

    # -- imaging ------------------------------------------------------------

    def sensor_shape(self) -> tuple[int, int]:
        hub = self.rig.hub
        if not isinstance(hub, ReplayHub) or not hub._initialised:
            return (512, 512)  # asked while loading, before the hub is ready
        # With no recording this says how to set one: asking a camera for its
        # frame size is how a controller checks that it can acquire.
        height, width = hub.recording.series[0].frames.shape[1:]
        return (int(height), int(width))

    def dtype(self) -> DTypeLike:
        hub = self.rig.hub
        if not isinstance(hub, ReplayHub) or hub._recording is None:
            return np.uint16
        return hub.recording.series[0].frames.dtype

    def light_fraction(self) -> float:
        """Light now relative to the recording's (1 = as recorded)."""
        hub, light = self.hub, self.light
        if not light.shutter_open:
            return 0.0
        p = light.laser_power_mw / hub._recorded_power_mw
        if hub._recorded_exposure_ms > 0:
            p *= self._exposure_ms / hub._recorded_exposure_ms
        return p

    def snap(self, buffer: NDArray[Any]) -> Mapping[str, Any]:
        hub = self.hub
        light = self.light
        recording = hub.recording
        position = hub.position_at(light.stage_x_um, light.stage_y_um)
        index = hub.next_frame(position)
        frame = recording.series[position].frames[index]
        if frame.shape != buffer.shape:
            raise DeviceError(
                f"{self.get_label()}: frame shape {frame.shape} differs from the "
                f"buffer {buffer.shape}"
            )
        p = self.light_fraction()
        if p >= 1.0:
            np.copyto(buffer, frame)
            if p > 1.0 and not self._unchanged_said:
                self._unchanged_said = True
                logger.warning(
                    "%s: light is %.3g x the recording's; replay cannot add signal, "
                    "frames are returned as recorded",
                    self.get_label(),
                    p,
                )
        else:
            self._thin(frame, p, hub.rng, buffer)
        return {
            "ReplayPosition": str(position),
            "ReplayFrame": str(index),
            "ReplayTime_s": f"{hub.now():.3f}",
            "ReplayLight": f"{min(p, 1.0):.6g}",
        }

    def _thin(
        self, frame: NDArray[Any], p: float, rng: np.random.Generator, out: NDArray[Any]
    ) -> None:
        """Keep each recorded electron with probability `p`; restore the read noise."""
        offset, gain, sigma = self.get_offset(), self._gain, self._read_noise_e
        electrons = frame.astype(np.float32)
        electrons -= offset
        electrons /= gain
        np.maximum(electrons, 0, out=electrons)
        np.rint(electrons, out=electrons)
        # Binomial draws cost ~0.1 us each: only where there is something to thin
        # (most pixels of dim recordings hold no electrons).
        kept = np.zeros(electrons.shape, np.float32)
        lit = np.flatnonzero(electrons)
        if lit.size:
            counts = electrons.ravel()[lit].astype(np.int64)
            kept.ravel()[lit] = rng.binomial(counts, p)
        # The recorded read noise is thinned to p x sigma: add the rest.
        extra = sigma * math.sqrt(max(0.0, 1.0 - p * p))
        if extra > 0:
            kept += rng.normal(0.0, extra, size=kept.shape).astype(np.float32)
        kept *= gain
        kept += offset
        np.rint(kept, out=kept)
        np.clip(kept, 0, np.iinfo(out.dtype).max, out=kept)
        np.copyto(out, kept, casting="unsafe")
