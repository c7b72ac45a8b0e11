"""The wire protocol between controller and workers (see docs/protocol.md)."""

from ._codec import ProtocolError, decode, encode
from ._endpoints import FrameClient, FrameServer, ServerStats
from ._messages import (
    PROTOCOL_VERSION,
    ArraySpec,
    DivisionEvent,
    FrameMessage,
    Heartbeat,
    Hello,
    Message,
    NucleusRecord,
    ResultMessage,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ArraySpec",
    "DivisionEvent",
    "FrameClient",
    "FrameMessage",
    "FrameServer",
    "Heartbeat",
    "Hello",
    "Message",
    "NucleusRecord",
    "ProtocolError",
    "ResultMessage",
    "ServerStats",
    "decode",
    "encode",
]
