"""Message headers: small JSON documents validated by pydantic.

Every header carries `protocol` (the wire version, independent of the package
version) and `kind`. Array data never goes into the header: each header lists
the buffers that follow it (`buffers`: dtype and shape), and the buffers travel
as raw bytes in the next parts of the same multipart message.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "PROTOCOL_VERSION",
    "ArraySpec",
    "DivisionEvent",
    "FrameMessage",
    "Heartbeat",
    "Hello",
    "Message",
    "NucleusRecord",
    "ResultMessage",
]

PROTOCOL_VERSION = 1
MAX_SIDE = 65_536

DType = Literal["uint8", "uint16", "uint32", "int32", "float32", "float64"]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Header(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # Built in Python, the version defaults; read from the wire, it must be
    # there (the codec checks `model_fields_set`: no Python call per message).
    protocol: Literal[1] = Field(1, description="Wire protocol version.")


class ArraySpec(BaseModel):
    """One raw buffer that follows the header: what it holds and how to read it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: Name = Field(description="Role of the buffer, e.g. 'image', 'restored'.")
    dtype: DType = Field(description="Numpy dtype name (little-endian).")
    shape: tuple[Annotated[int, Field(ge=1, le=MAX_SIDE)], ...] = Field(
        min_length=1, max_length=4, description="Array shape, C order."
    )

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> ArraySpec:
        """The spec of `array` under `name`."""
        return cls(name=name, dtype=array.dtype.name, shape=array.shape)

    @property
    def numpy_dtype(self) -> np.dtype[np.generic]:
        """The little-endian numpy dtype of the buffer."""
        return _little_endian(self.dtype)

    @property
    def nbytes(self) -> int:
        """Size of the buffer in bytes."""
        return _little_endian(self.dtype).itemsize * math.prod(self.shape)


@cache
def _little_endian(name: str) -> np.dtype[np.generic]:
    return np.dtype(name).newbyteorder("<")


class Hello(_Header):
    """Worker -> controller, on connecting: who it is and how much it can take."""

    kind: Literal["hello"] = "hello"
    worker_id: Name = Field(description="Stable name of the worker process.")
    credits: int = Field(
        2, ge=1, le=64, description="Frames the worker accepts before answering."
    )
    device: Name = Field("cpu", description="Where inference runs (cpu, cuda:0, ...).")
    models: dict[Name, Name] = Field(
        default_factory=dict, description="Model name -> weights hash."
    )


class Heartbeat(_Header):
    """Either way: the sender is alive. The controller echoes workers' heartbeats."""

    kind: Literal["heartbeat"] = "heartbeat"
    sender: Name = Field(description="Worker id, or 'controller'.")
    time_s: float = Field(ge=0, description="Sender's monotonic clock, seconds.")


class FrameMessage(_Header):
    """Controller -> worker: one acquired frame (buffer 'image')."""

    kind: Literal["frame"] = "frame"
    frame_index: int = Field(ge=0, description="Index of the frame in the run.")
    position: int = Field(ge=0, description="Index of the stage position.")
    position_name: Name = Field("p000", description="Name of the stage position.")
    t_index: int = Field(0, ge=0, description="Time point index at this position.")
    z_index: int = Field(0, ge=0, description="Plane index in a z-stack.")
    time_s: float = Field(ge=0, description="Seconds since the run started.")
    exposure_ms: float = Field(ge=0, description="Exposure of the frame.")
    laser_power_mw: float = Field(ge=0, description="Laser power of the frame.")
    pixel_size_um: float = Field(ge=0, description="Pixel size in the sample.")
    buffers: tuple[ArraySpec] = Field(description="Exactly one buffer: 'image'.")

    @model_validator(mode="after")
    def _one_image(self) -> FrameMessage:
        if self.buffers[0].name != "image" or len(self.buffers[0].shape) != 2:
            raise ValueError("a frame carries one 2-D buffer named 'image'")
        return self


class NucleusRecord(BaseModel):
    """One labelled nucleus in a result."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: int = Field(ge=1, description="Label value in the label image, track id.")
    y: float = Field(description="Centroid row, pixels.")
    x: float = Field(description="Centroid column, pixels.")
    area_px: int = Field(ge=0, description="Area in pixels.")
    mean_intensity: float = Field(description="Mean of the restored image inside.")
    mitosis_score: float = Field(0.0, ge=0, le=1, description="P(mitosis).")


class DivisionEvent(BaseModel):
    """A mother nucleus seen splitting into two daughters."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    y: float = Field(description="Row of the division, pixels.")
    x: float = Field(description="Column of the division, pixels.")
    mother_id: int = Field(ge=0)
    daughter_ids: tuple[int, int]
    score: float = Field(ge=0, le=1)


class ResultMessage(_Header):
    """Worker -> controller: what the worker found in one frame.

    Optional buffers: 'restored' (float32 or uint16) and 'labels' (uint32).
    `error` is set instead of results when the frame could not be analysed.
    """

    kind: Literal["result"] = "result"
    frame_index: int = Field(ge=0)
    position: int = Field(ge=0)
    worker_id: Name
    timings_ms: dict[Name, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    nuclei: tuple[NucleusRecord, ...] = ()
    divisions: tuple[DivisionEvent, ...] = ()
    error: str | None = Field(None, max_length=2000)
    buffers: tuple[ArraySpec, ...] = Field((), max_length=2)

    @model_validator(mode="after")
    def _known_buffers(self) -> ResultMessage:
        names = [b.name for b in self.buffers]
        if len(set(names)) != len(names) or not set(names) <= {"restored", "labels"}:
            raise ValueError(f"result buffers must be 'restored'/'labels', got {names}")
        return self


Message = Annotated[
    Hello | Heartbeat | FrameMessage | ResultMessage, Field(discriminator="kind")
]
