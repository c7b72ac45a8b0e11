"""Messages survive encode/decode unchanged; malformed ones are refused with a reason.

The header travels as UTF-8 JSON and the arrays as raw little-endian C-order
buffers, so decoded arrays can view the received memory instead of copying it.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zmq
from pydantic import ValidationError

from scopeloop.errors import ScopeloopError
from scopeloop.protocol import (
    PROTOCOL_VERSION,
    ArraySpec,
    DivisionEvent,
    FrameMessage,
    Heartbeat,
    Hello,
    NucleusRecord,
    ProtocolError,
    ResultMessage,
    decode,
    encode,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from pydantic import BaseModel

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 65_535, size=(48, 64), dtype=np.uint16)
RESTORED = RNG.random((48, 64), dtype=np.float32)
LABELS = RNG.integers(0, 40, size=(48, 64), dtype=np.uint32)


def frame_of(image: np.ndarray, **fields: Any) -> FrameMessage:
    values: dict[str, Any] = {
        "frame_index": 7,
        "position": 2,
        "position_name": "p002",
        "t_index": 3,
        "z_index": 1,
        "time_s": 1812.5,
        "exposure_ms": 20.0,
        "laser_power_mw": 2.0,
        "pixel_size_um": 0.65,
        "buffers": (ArraySpec.of("image", image),),
    }
    return FrameMessage(**(values | fields))


def result_of(**arrays: np.ndarray) -> ResultMessage:
    return ResultMessage(
        frame_index=7,
        position=2,
        worker_id="gpu-worker-1",
        timings_ms={"restore": 12.5, "segment": 30.25},
        nuclei=(
            NucleusRecord(id=1, y=10.5, x=20.25, area_px=120, mean_intensity=812.0),
            NucleusRecord(
                id=2, y=30.0, x=40.0, area_px=95, mean_intensity=640.5, mitosis_score=1
            ),
        ),
        divisions=(
            DivisionEvent(y=30.0, x=40.0, mother_id=2, daughter_ids=(3, 4), score=0.9),
        ),
        buffers=tuple(ArraySpec.of(name, a) for name, a in arrays.items()),
    )


MESSAGES = [
    pytest.param(Hello(worker_id="w1"), [], id="hello-defaults"),
    pytest.param(
        Hello(
            worker_id="w2",
            credits=4,
            device="cuda:0",
            models={"restore": "sha256:ab12", "segment": "sha256:cd34"},
        ),
        [],
        id="hello-models",
    ),
    pytest.param(Heartbeat(sender="controller", time_s=12.75), [], id="heartbeat"),
    pytest.param(frame_of(IMAGE), [IMAGE], id="frame-uint16"),
    pytest.param(
        result_of(restored=RESTORED, labels=LABELS),
        [RESTORED, LABELS],
        id="result-restored-labels",
    ),
    pytest.param(result_of(), [], id="result-no-buffers"),
    pytest.param(
        ResultMessage(
            frame_index=0, position=0, worker_id="w1", error="CUDA out of memory"
        ),
        [],
        id="result-error",
    ),
]


def buffer_of(part: Any) -> memoryview:
    """The memory of a received part (bytes or zmq.Frame)."""
    return memoryview(getattr(part, "buffer", part)).cast("B")


_PAIR_NUMBERS = itertools.count()


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """Two connected inproc PAIR sockets.

    Each pair gets a name of its own: an inproc name can stay taken for a
    moment after its socket closed, so names are never reused.
    """
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        address = f"inproc://codec-{os.getpid()}-{next(_PAIR_NUMBERS)}"
        a.bind(address)
        b.connect(address)
        yield a, b
    finally:
        a.close(linger=0)
        b.close(linger=0)


def as_bytes(parts: list[Any]) -> list[bytes]:
    return [bytes(p) for p in parts]


def as_frames(parts: list[Any]) -> list[zmq.Frame]:
    return [zmq.Frame(bytes(p)) for p in parts]


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize(
    "transport", [as_bytes, as_frames], ids=["bytes", "zmq-frames"]
)
@pytest.mark.parametrize(("header", "arrays"), MESSAGES)
def test_every_message_round_trips(
    header: BaseModel,
    arrays: list[np.ndarray],
    transport: Callable[[list[Any]], Sequence[Any]],
) -> None:
    received = transport(encode(header, arrays))

    decoded, decoded_arrays = decode(received)

    assert decoded == header
    assert type(decoded) is type(header)
    assert len(decoded_arrays) == len(arrays)
    for original, array, part in zip(arrays, decoded_arrays, received[1:], strict=True):
        assert array.dtype == original.dtype
        np.testing.assert_array_equal(array, original)
        assert array.base is not None  # a view, not a copy
        assert np.shares_memory(array, np.frombuffer(buffer_of(part), np.uint8))


@pytest.mark.parametrize(("header", "arrays"), MESSAGES)
def test_round_trip_through_a_socket_without_copies(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
    header: BaseModel,
    arrays: list[np.ndarray],
) -> None:
    sender, receiver = pair

    sender.send_multipart(encode(header, arrays), copy=False)
    received = receiver.recv_multipart(copy=False)
    decoded, decoded_arrays = decode(received)

    assert decoded == header
    for original, array, frame in zip(
        arrays, decoded_arrays, received[1:], strict=True
    ):
        np.testing.assert_array_equal(array, original)
        assert np.shares_memory(array, np.frombuffer(frame.buffer, np.uint8))


def test_encode_does_not_copy_contiguous_arrays() -> None:
    parts = encode(frame_of(IMAGE), [IMAGE])

    assert np.shares_memory(np.frombuffer(parts[1], np.uint8), IMAGE)


@pytest.mark.parametrize(
    "image",
    [np.asfortranarray(IMAGE), IMAGE[::-1, ::2], IMAGE.T],
    ids=["fortran-order", "strided", "transposed"],
)
def test_encode_writes_non_contiguous_arrays_in_c_order(image: np.ndarray) -> None:
    parts = encode(frame_of(image), [image])

    _, (decoded,) = decode(as_bytes(parts))

    assert bytes(parts[1]) == np.ascontiguousarray(image).tobytes()
    np.testing.assert_array_equal(decoded, image)


def test_wire_format_is_utf8_json_then_raw_little_endian_bytes() -> None:
    restored = RESTORED[:4, :5]
    labels = LABELS[:4, :5]

    parts = as_bytes(
        encode(result_of(restored=restored, labels=labels), [restored, labels])
    )

    header = json.loads(parts[0].decode("utf-8"))
    assert header["protocol"] == PROTOCOL_VERSION == 1
    assert header["kind"] == "result"
    assert header["buffers"] == [
        {"name": "restored", "dtype": "float32", "shape": [4, 5]},
        {"name": "labels", "dtype": "uint32", "shape": [4, 5]},
    ]
    assert parts[1] == restored.astype("<f4").tobytes(order="C")
    assert parts[2] == labels.astype("<u4").tobytes(order="C")


# -- malformed messages ----------------------------------------------------------

FRAME_HEADER: dict[str, Any] = frame_of(IMAGE[:4, :6]).model_dump(mode="json")
IMAGE_BYTES = IMAGE[:4, :6].tobytes()
RESULT_HEADER: dict[str, Any] = result_of(labels=LABELS[:2, :3]).model_dump(mode="json")
LABEL_BYTES = LABELS[:2, :3].tobytes()


def json_parts(header: Any, *buffers: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), *buffers]


def frame_with(**fields: Any) -> dict[str, Any]:
    return FRAME_HEADER | fields


def image_spec(**fields: Any) -> list[dict[str, Any]]:
    return [{"name": "image", "dtype": "uint16", "shape": [4, 6]} | fields]


def without(header: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in header.items() if k != key}


MALFORMED = [
    pytest.param([], "empty message", id="empty"),
    pytest.param([b""], "not JSON", id="empty-header"),
    pytest.param([b"\x00\x01 binary junk"], "not JSON", id="not-json"),
    pytest.param([b'{"protocol": 1, "kind": '], "not JSON", id="truncated-json"),
    pytest.param(
        [json.dumps(FRAME_HEADER).encode("utf-16"), IMAGE_BYTES],
        "not JSON",
        id="utf16-json",
    ),
    pytest.param([pickle.dumps(FRAME_HEADER), IMAGE_BYTES], "not JSON", id="pickle"),
    pytest.param([b"[" * 100_000], "not JSON", id="deeply-nested-json"),
    pytest.param(json_parts([1, 2]), "JSON list, not an object", id="json-list"),
    pytest.param(json_parts("hello"), "JSON str, not an object", id="json-string"),
    pytest.param(json_parts(None), "JSON NoneType, not an object", id="json-null"),
    pytest.param(
        json_parts(frame_with(protocol=2), IMAGE_BYTES),
        "unknown protocol version 2",
        id="protocol-2",
    ),
    pytest.param(
        json_parts(without(FRAME_HEADER, "protocol"), IMAGE_BYTES),
        "unknown protocol version None",
        id="protocol-missing",
    ),
    pytest.param(
        json_parts(frame_with(protocol="1"), IMAGE_BYTES),
        "unknown protocol version '1'",
        id="protocol-string",
    ),
    pytest.param(
        json_parts({"protocol": 1, "kind": "telemetry"}),
        "'telemetry' found using 'kind' does not match",
        id="unknown-kind",
    ),
    pytest.param(
        json_parts({"protocol": 1, "sender": "w1", "time_s": 0}),
        "discriminator 'kind'",
        id="kind-missing",
    ),
    pytest.param(
        json_parts({"protocol": 1, "kind": "hello", "worker_id": "w", "colour": 1}),
        "hello.colour: Extra inputs are not permitted",
        id="extra-field",
    ),
    pytest.param(
        json_parts(frame_with(buffers=image_spec(order="F")), IMAGE_BYTES),
        "Extra inputs are not permitted",
        id="extra-field-in-buffer-spec",
    ),
    pytest.param(
        json_parts({"protocol": 1, "kind": "heartbeat", "time_s": 0}),
        "heartbeat.sender: Field required",
        id="missing-field",
    ),
    pytest.param(
        json_parts(without(FRAME_HEADER, "buffers")),
        "frame.buffers: Field required",
        id="frame-without-buffers",
    ),
    pytest.param(
        json_parts(FRAME_HEADER),
        "frame header declares 1 buffers, 0 followed",
        id="buffer-missing",
    ),
    pytest.param(
        json_parts(FRAME_HEADER, IMAGE_BYTES, IMAGE_BYTES),
        "frame header declares 1 buffers, 2 followed",
        id="buffer-too-many",
    ),
    pytest.param(
        json_parts({"protocol": 1, "kind": "hello", "worker_id": "w"}, b"\x00"),
        "hello header declares 0 buffers, 1 followed",
        id="buffer-after-hello",
    ),
    pytest.param(
        json_parts(FRAME_HEADER, IMAGE_BYTES[:-1]),
        "buffer 'image': 47 bytes, expected 48",
        id="buffer-too-short",
    ),
    pytest.param(
        json_parts(FRAME_HEADER, IMAGE_BYTES + b"\x00\x00"),
        "buffer 'image': 50 bytes, expected 48",
        id="buffer-too-long",
    ),
    pytest.param(
        json_parts(frame_with(buffers=image_spec(shape=[2, 4, 3])), IMAGE_BYTES),
        "one 2-D buffer named 'image'",
        id="frame-3d-image",
    ),
    pytest.param(
        json_parts(frame_with(buffers=image_spec(name="pixels")), IMAGE_BYTES),
        "one 2-D buffer named 'image'",
        id="frame-buffer-not-image",
    ),
    pytest.param(
        json_parts(frame_with(buffers=image_spec() * 2), IMAGE_BYTES, IMAGE_BYTES),
        "at most 1 item",
        id="frame-two-images",
    ),
    pytest.param(
        json_parts(frame_with(buffers=image_spec(dtype="float16")), IMAGE_BYTES),
        "buffers.0.dtype",
        id="unsupported-dtype",
    ),
    pytest.param(
        json_parts(frame_with(buffers=image_spec(shape=[0, 6])), b""),
        "buffers.0.shape.0",
        id="zero-length-side",
    ),
    pytest.param(
        json_parts(
            RESULT_HEADER
            | {"buffers": [{"name": "mask", "dtype": "uint32", "shape": [2, 3]}]},
            LABEL_BYTES,
        ),
        "result buffers must be 'restored'/'labels', got ['mask']",
        id="result-unknown-buffer-name",
    ),
    pytest.param(
        json_parts(
            RESULT_HEADER | {"buffers": RESULT_HEADER["buffers"] * 2},
            LABEL_BYTES,
            LABEL_BYTES,
        ),
        "got ['labels', 'labels']",
        id="result-duplicate-buffer",
    ),
    pytest.param(
        json_parts(frame_with(frame_index=-1), IMAGE_BYTES),
        "frame.frame_index: Input should be greater than or equal to 0",
        id="negative-frame-index",
    ),
    pytest.param(
        json_parts({"protocol": 1, "kind": "hello", "worker_id": "w", "credits": 0}),
        "hello.credits: Input should be greater than or equal to 1",
        id="zero-credits",
    ),
    pytest.param(
        [b'{"protocol": 1, "kind": "heartbeat", "sender": "w", "time_s": NaN}'],
        "heartbeat.time_s: Input should be a finite number",
        id="nan-time",
    ),
    pytest.param(
        [b'{"protocol": 1, "kind": "heartbeat", "sender": "w", "time_s": 1e999}'],
        "heartbeat.time_s: Input should be a finite number",
        id="infinite-time",
    ),
    pytest.param(
        [b'{"protocol": 1, "kind": "hello", "worker_id": "' + b"w" * (1 << 20) + b'"}'],
        "exceeds 1048576",
        id="header-over-1-MiB",
    ),
]


@pytest.mark.parametrize(("parts", "reason"), MALFORMED)
def test_malformed_message_is_refused_with_its_reason(
    parts: list[bytes], reason: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(parts)

    assert reason in str(info.value)


def test_protocol_error_is_a_scopeloop_value_error() -> None:
    with pytest.raises(ProtocolError) as info:
        decode([])

    assert isinstance(info.value, ScopeloopError)
    assert isinstance(info.value, ValueError)


def test_header_of_exactly_1_mib_is_not_refused_for_its_size() -> None:
    head = b'{"protocol": 1, "kind": "heartbeat", "sender": "w", "time_s": 0}'
    parts = [head + b" " * ((1 << 20) - len(head))]

    header, _ = decode(parts)

    assert header == Heartbeat(sender="w", time_s=0)


# -- encode refuses arrays that disagree with the header ----------------------------


@pytest.mark.parametrize(
    ("header", "arrays", "reason"),
    [
        pytest.param(
            frame_of(IMAGE),
            [IMAGE.astype(np.float32)],
            "array is float32(48, 64), header says uint16(48, 64)",
            id="wrong-dtype",
        ),
        pytest.param(
            frame_of(IMAGE),
            [IMAGE.astype(">u2")],
            "header says uint16",
            id="big-endian",
        ),
        pytest.param(
            frame_of(IMAGE),
            [IMAGE.T],
            "array is uint16(64, 48), header says uint16(48, 64)",
            id="wrong-shape",
        ),
        pytest.param(
            frame_of(IMAGE), [], "lists 1 buffers but 0 arrays", id="array-missing"
        ),
        pytest.param(
            frame_of(IMAGE),
            [IMAGE, IMAGE],
            "lists 1 buffers but 2 arrays",
            id="array-extra",
        ),
        pytest.param(
            Hello(worker_id="w"), [IMAGE], "lists 0 buffers but 1 arrays", id="hello"
        ),
        pytest.param(
            result_of(restored=RESTORED, labels=LABELS),
            [LABELS, RESTORED],
            "buffer 'restored'",
            id="result-arrays-swapped",
        ),
    ],
)
def test_encode_refuses_arrays_that_do_not_match_the_header(
    header: BaseModel, arrays: list[np.ndarray], reason: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        encode(header, arrays)

    assert reason in str(info.value)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: Heartbeat(sender="w", time_s=float("inf")), id="inf"),
        pytest.param(
            lambda: NucleusRecord(
                id=1, y=0, x=0, area_px=0, mean_intensity=float("nan")
            ),
            id="nan",
        ),
        pytest.param(
            lambda: DivisionEvent(
                y=float("-inf"), x=0, mother_id=1, daughter_ids=(2, 3), score=1
            ),
            id="minus-inf",
        ),
    ],
)
def test_non_finite_floats_are_refused_when_a_message_is_built(
    build: Callable[[], BaseModel],
) -> None:
    # JSON has no NaN or Infinity: letting them in would encode them as null,
    # which the receiving end then refuses.
    with pytest.raises(ValidationError, match="finite number"):
        build()
