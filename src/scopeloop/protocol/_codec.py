"""Encoding and decoding of multipart messages: JSON header + raw buffers.

`encode` returns the parts to hand to `socket.send_multipart(parts, copy=False)`:
the header as UTF-8 JSON, then each array as a memoryview of its own memory (no
copy on our side; pyzmq sends large buffers zero-copy). `decode` turns received
parts back into a validated header and numpy arrays that view the received
buffers. Anything malformed raises `ProtocolError` with the reason; nothing is
ever unpickled.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq
from pydantic import TypeAdapter, ValidationError

from scopeloop.errors import ScopeloopError

from ._messages import PROTOCOL_VERSION, Message

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import BaseModel

__all__ = ["ProtocolError", "decode", "encode"]

MAX_HEADER_BYTES = 1 << 20
_MESSAGE = TypeAdapter(Message)


class ProtocolError(ScopeloopError, ValueError):
    """A message that does not follow the protocol; the message says why."""


def encode(header: BaseModel, arrays: Sequence[np.ndarray] = ()) -> list[Any]:
    """Parts of a multipart message: the header, then one buffer per array."""
    specs = getattr(header, "buffers", ())
    if len(specs) != len(arrays):
        raise ProtocolError(
            f"{header.__class__.__name__} lists {len(specs)} buffers but "
            f"{len(arrays)} arrays were given"
        )
    # model_dump_json without its str round trip: the serialiser makes bytes.
    parts: list[Any] = [header.__pydantic_serializer__.to_json(header)]
    for spec, array in zip(specs, arrays, strict=True):
        if array.dtype != spec.numpy_dtype or array.shape != spec.shape:
            raise ProtocolError(
                f"buffer {spec.name!r}: array is {array.dtype}{array.shape}, header "
                f"says {spec.dtype}{spec.shape}"
            )
        parts.append(memoryview(np.ascontiguousarray(array)).cast("B"))  # type: ignore[arg-type]
    return parts


def _bytes_of(part: Any) -> memoryview:
    buffer = getattr(part, "buffer", part)  # zmq.Frame exposes .buffer
    return memoryview(buffer).cast("B")


def _explain(text: bytes) -> None:
    """Raise a `ProtocolError` that says what is wrong with a header."""
    try:
        raw = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"header is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"header is a JSON {type(raw).__name__}, not an object")
    version = raw.get("protocol")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unknown protocol version {version!r} (this end speaks {PROTOCOL_VERSION})"
        )
    try:
        _MESSAGE.validate_python(raw)
    except ValidationError as e:
        reasons = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'header'}: {err['msg']}"
            for err in e.errors()[:5]
        )
        raise ProtocolError(
            f"bad {raw.get('kind', '?')!s:.40} header: {reasons}"
        ) from None
    raise ProtocolError("header rejected by the JSON validator")


def decode(parts: Sequence[Any]) -> tuple[Message, list[np.ndarray]]:
    """The header and arrays of a received multipart message.

    Raises
    ------
    ProtocolError
        If the message is empty, its header is not a JSON object, its protocol
        version is unknown, a field is missing or wrong, or the buffers do not
        match what the header declares.

    """
    if not parts:
        raise ProtocolError("empty message")
    head = parts[0]
    size = _size_of(head)
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {size} bytes exceeds {MAX_HEADER_BYTES}")
    text = bytes(head)  # the same object if it is bytes already
    try:
        header = _MESSAGE.validate_json(text)  # one pass, usually
    except ValidationError:
        _explain(text)  # raises ProtocolError with the reason
        raise  # pragma: no cover (_explain always raises)
    if "protocol" not in header.model_fields_set:  # defaulted: not on the wire
        raise ProtocolError(
            f"unknown protocol version None (this end speaks {PROTOCOL_VERSION})"
        )
    specs = getattr(header, "buffers", ())
    if len(parts) - 1 != len(specs):
        raise ProtocolError(
            f"{header.kind} header declares {len(specs)} buffers, "
            f"{len(parts) - 1} followed"
        )
    arrays = []
    for spec, part in zip(specs, parts[1:], strict=True):
        dtype, nbytes = _layout(spec.dtype, spec.shape)
        size = _size_of(part)
        if size != nbytes:
            raise ProtocolError(
                f"buffer {spec.name!r}: {size} bytes, expected {nbytes} "
                f"for {spec.dtype}{spec.shape}"
            )
        data = part if type(part) in _FLAT else _bytes_of(part)
        arrays.append(np.frombuffer(data, dtype).reshape(spec.shape))
    return header, arrays


# Buffers whose len() is their size in bytes, which numpy reads as they are.
_FLAT = frozenset({bytes, bytearray, zmq.Frame})


def _size_of(part: Any) -> int:
    """Size of a part in bytes."""
    return len(part) if type(part) in _FLAT else _bytes_of(part).nbytes


@lru_cache(maxsize=64)
def _layout(dtype: str, shape: tuple[int, ...]) -> tuple[np.dtype[Any], int]:
    """The numpy dtype and byte size of a buffer (the same few, frame after frame)."""
    numpy_dtype = np.dtype(dtype).newbyteorder("<")
    return numpy_dtype, numpy_dtype.itemsize * math.prod(shape)
