"""Property tests of the codec: decode fails only with ProtocolError; round trips.

A receiver must survive anything a peer (or a stray process) sends it, so
`decode` may raise `ProtocolError` and nothing else, whatever the bytes.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from scopeloop.protocol import (
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

FUZZ = settings(max_examples=200, deadline=None)

DTYPES = ["uint8", "uint16", "uint32", "int32", "float32", "float64"]
KINDS = ["hello", "heartbeat", "frame", "result"]
FIELDS = sorted(
    {
        name
        for model in (Hello, Heartbeat, FrameMessage, ResultMessage)
        for name in model.model_fields
    }
)


def decode_or_refuse(parts: list[bytes]) -> tuple[Any, list[np.ndarray]] | None:
    """Decode, or None where the message is refused (only with ProtocolError)."""
    try:
        return decode(parts)
    except ProtocolError:
        return None


def assert_re_encodable(decoded: tuple[Any, list[np.ndarray]]) -> None:
    """What decode accepts, encode can send again, and it reads back the same."""
    header, arrays = decoded
    again, again_arrays = decode([bytes(p) for p in encode(header, arrays)])
    assert again == header
    for a, b in zip(arrays, again_arrays, strict=True):
        assert a.tobytes() == b.tobytes()


# -- strategies ----------------------------------------------------------------

names = st.text(min_size=1, max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
indices = st.integers(min_value=0, max_value=2**63)
probabilities = st.floats(min_value=0, max_value=1)


def arrays_of(
    shape: st.SearchStrategy[tuple[int, ...]],
) -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from(DTYPES).flatmap(
        lambda dtype: hnp.arrays(np.dtype(dtype).newbyteorder("<"), shape)
    )


images = arrays_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24))
result_arrays = arrays_of(
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)
)


@st.composite
def frames(draw: st.DrawFn) -> tuple[FrameMessage, list[np.ndarray]]:
    image = draw(images)
    header = FrameMessage(
        frame_index=draw(indices),
        position=draw(indices),
        position_name=draw(names),
        t_index=draw(indices),
        z_index=draw(indices),
        time_s=draw(non_negative),
        exposure_ms=draw(non_negative),
        laser_power_mw=draw(non_negative),
        pixel_size_um=draw(non_negative),
        buffers=(ArraySpec.of("image", image),),
    )
    return header, [image]


nuclei = st.builds(
    NucleusRecord,
    id=st.integers(min_value=1, max_value=2**32),
    y=finite,
    x=finite,
    area_px=st.integers(min_value=0, max_value=2**32),
    mean_intensity=finite,
    mitosis_score=probabilities,
)
divisions = st.builds(
    DivisionEvent,
    y=finite,
    x=finite,
    mother_id=st.integers(min_value=0, max_value=2**32),
    daughter_ids=st.tuples(st.integers(), st.integers()),
    score=probabilities,
)


@st.composite
def results(draw: st.DrawFn) -> tuple[ResultMessage, list[np.ndarray]]:
    buffer_names = draw(st.sets(st.sampled_from(["restored", "labels"])))
    arrays = {name: draw(result_arrays) for name in sorted(buffer_names)}
    header = ResultMessage(
        frame_index=draw(indices),
        position=draw(indices),
        worker_id=draw(names),
        timings_ms=draw(st.dictionaries(names, non_negative, max_size=4)),
        nuclei=tuple(draw(st.lists(nuclei, max_size=5))),
        divisions=tuple(draw(st.lists(divisions, max_size=3))),
        error=draw(st.none() | st.text(max_size=50)),
        buffers=tuple(ArraySpec.of(name, a) for name, a in arrays.items()),
    )
    return header, list(arrays.values())


hellos = st.builds(
    Hello,
    worker_id=names,
    credits=st.integers(min_value=1, max_value=64),
    device=names,
    models=st.dictionaries(names, names, max_size=3),
).map(lambda h: (h, []))
heartbeats = st.builds(Heartbeat, sender=names, time_s=non_negative).map(
    lambda h: (h, [])
)
messages = st.one_of(frames(), results(), hellos, heartbeats)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from([float("nan"), float("inf"), -float("inf")])
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
buffer_specs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["image", "restored", "labels", "mask"]),
        "dtype": st.sampled_from([*DTYPES, "float16", "object"]),
        "shape": st.lists(st.integers(min_value=-1, max_value=3), max_size=5),
    }
)


def buffers_for(draw: st.DrawFn, specs: Any) -> list[bytes]:
    """Bytes for the specs: of the declared size where that is small, or random."""
    buffers = []
    for spec in specs if isinstance(specs, list) else []:
        try:
            size = ArraySpec.model_validate(spec).nbytes
        except ValueError:
            size = 0
        exact = 0 < size <= 1024 and draw(st.booleans())
        sizes = {"min_size": size, "max_size": size} if exact else {"max_size": 32}
        buffers.append(draw(st.binary(**sizes)))
    return buffers


@st.composite
def json_headers(draw: st.DrawFn) -> list[bytes]:
    """A protocol-1 header with random kind and fields, and buffers.

    Starts from a valid message's header, then changes the kind, sets fields
    (known or not) to random JSON values and deletes fields.
    """
    message, arrays = draw(messages)
    header: dict[str, Any] = message.model_dump(mode="json")
    buffers = [bytes(p) for p in encode(message, arrays)[1:]]
    if draw(st.booleans()):
        header["kind"] = draw(st.sampled_from([*KINDS, "bogus"]))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        key = draw(st.sampled_from(FIELDS) | st.text(max_size=8))
        if draw(st.booleans()):
            header.pop(key, None)
        elif key == "buffers":
            header[key] = draw(st.lists(buffer_specs, max_size=3))
            buffers = buffers_for(draw, header[key])
        else:
            header[key] = draw(json_values)
    header["protocol"] = 1
    return [json.dumps(header).encode(), *buffers]


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    """A valid message with a part flipped, cut or extended, or parts added/dropped."""
    header, arrays = draw(messages)
    parts = [bytes(p) for p in encode(header, arrays)]
    index = draw(st.integers(min_value=0, max_value=len(parts) - 1))
    part = parts[index]
    mutation = draw(
        st.sampled_from(["flip", "truncate", "extend", "drop", "duplicate", "insert"])
    )
    if mutation == "flip" and part:
        at = draw(st.integers(min_value=0, max_value=len(part) - 1))
        bit = draw(st.integers(min_value=0, max_value=7))
        parts[index] = part[:at] + bytes([part[at] ^ (1 << bit)]) + part[at + 1 :]
    elif mutation == "truncate":
        parts[index] = part[
            : draw(st.integers(min_value=0, max_value=max(len(part) - 1, 0)))
        ]
    elif mutation == "extend":
        parts[index] = part + draw(st.binary(min_size=1, max_size=16))
    elif mutation == "drop":
        del parts[index]
    elif mutation == "duplicate":
        parts.insert(index, part)
    else:
        parts.insert(index, draw(st.binary(max_size=16)))
    return parts


# -- properties ------------------------------------------------------------------


@FUZZ
@given(
    st.lists(
        st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()),
        max_size=5,
    )
)
def test_decode_refuses_arbitrary_bytes_only_with_protocol_error(
    parts: list[bytes],
) -> None:
    decoded = decode_or_refuse(parts)

    if decoded is not None:
        assert_re_encodable(decoded)


@FUZZ
@given(json_headers())
def test_decode_refuses_arbitrary_json_headers_only_with_protocol_error(
    parts: list[bytes],
) -> None:
    decoded = decode_or_refuse(parts)

    if decoded is not None:
        assert_re_encodable(decoded)


@FUZZ
@given(mutated())
def test_decode_refuses_mutated_messages_only_with_protocol_error(
    parts: list[bytes],
) -> None:
    decoded = decode_or_refuse(parts)

    if decoded is not None:
        assert_re_encodable(decoded)


@FUZZ
@given(messages)
def test_valid_messages_round_trip(message: tuple[Any, list[np.ndarray]]) -> None:
    header, arrays = message

    decoded, decoded_arrays = decode([bytes(p) for p in encode(header, arrays)])

    assert decoded == header
    assert len(decoded_arrays) == len(arrays)
    for original, array in zip(arrays, decoded_arrays, strict=True):
        assert array.dtype == original.dtype
        assert array.shape == original.shape
        assert array.tobytes() == original.tobytes()  # bit for bit, NaNs included


@FUZZ
@given(st.floats())
def test_any_float_a_message_accepts_round_trips(value: float) -> None:
    try:
        header = ResultMessage(
            frame_index=0,
            position=0,
            worker_id="w",
            timings_ms={"segment": abs(value)},
            nuclei=(
                NucleusRecord(id=1, y=value, x=value, area_px=1, mean_intensity=value),
            ),
            divisions=(
                DivisionEvent(
                    y=value, x=-value, mother_id=1, daughter_ids=(2, 3), score=1
                ),
            ),
        )
    except ValidationError:
        return  # refused where the message is built, not where it arrives

    decoded, _ = decode(encode(header))

    assert decoded == header
