"""The binary framing of the Feishu long connection (``pbbp2.Frame``), without lark_oapi.

Every websocket message is one protobuf (proto2) ``Frame``::

    message Header { required string key = 1; required string value = 2; }
    message Frame {
      required uint64 SeqID = 1;   required uint64 LogID = 2;
      required int32 service = 3;  required int32 method = 4;   // 0 control, 1 data
      repeated Header headers = 5;
      optional string payload_encoding = 6;  optional string payload_type = 7;
      optional bytes payload = 8;            optional string LogIDNew = 9;
    }

This is the schema of ``lark_oapi/ws/pb/pbbp2_pb2.py``. The simulator encodes it by hand on
purpose: importing any ``lark_oapi`` module runs the SDK package ``__init__`` (several seconds,
and ``lark_oapi.ws.client`` creates an event loop at import time), and an independent codec
means the tests check the wire format against the real SDK instead of against itself
(``tests/simulator`` round-trips frames through ``pbbp2_pb2.Frame``).

Pure functions only; no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = [
    "METHOD_CONTROL",
    "METHOD_DATA",
    "Frame",
    "FrameDecodeError",
    "decode_frame",
    "encode_frame",
    "event_frames",
    "pong_frame",
]

METHOD_CONTROL = 0
METHOD_DATA = 1

# Header keys used by lark_oapi.ws (lark_oapi/ws/const.py).
HEADER_TYPE = "type"
HEADER_MESSAGE_ID = "message_id"
HEADER_SUM = "sum"
HEADER_SEQ = "seq"
HEADER_TRACE_ID = "trace_id"
HEADER_BIZ_RT = "biz_rt"

_WIRE_VARINT = 0
_WIRE_64BIT = 1
_WIRE_LEN = 2
_WIRE_32BIT = 5
_U64 = (1 << 64) - 1


class FrameDecodeError(ValueError):
    """The bytes are not a valid ``pbbp2.Frame``."""


@dataclass(slots=True)
class Frame:
    """One ``pbbp2.Frame``. ``headers`` keeps order and duplicates, as protobuf does."""

    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = METHOD_CONTROL
    headers: list[tuple[str, str]] = field(default_factory=list)
    payload: bytes = b""
    payload_encoding: str | None = None
    payload_type: str | None = None
    log_id_new: str | None = None

    def header(self, key: str, default: str | None = None) -> str | None:
        """The first header named `key` (the SDK's ``_get_by_key`` takes the first too)."""
        for k, v in self.headers:
            if k == key:
                return v
        return default


# -- encoding -------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= _U64  # negative int32/int64 are sent as 10-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field_no: int, wire: int) -> bytes:
    return _varint((field_no << 3) | wire)


def _len_field(field_no: int, data: bytes) -> bytes:
    return _key(field_no, _WIRE_LEN) + _varint(len(data)) + data


def encode_frame(frame: Frame) -> bytes:
    """Serialize `frame` exactly as ``pbbp2_pb2.Frame.SerializeToString()`` would."""
    out = bytearray()
    out += _key(1, _WIRE_VARINT) + _varint(frame.seq_id)
    out += _key(2, _WIRE_VARINT) + _varint(frame.log_id)
    out += _key(3, _WIRE_VARINT) + _varint(frame.service)
    out += _key(4, _WIRE_VARINT) + _varint(frame.method)
    for k, v in frame.headers:
        header = _len_field(1, k.encode()) + _len_field(2, v.encode())
        out += _len_field(5, header)
    if frame.payload_encoding is not None:
        out += _len_field(6, frame.payload_encoding.encode())
    if frame.payload_type is not None:
        out += _len_field(7, frame.payload_type.encode())
    if frame.payload:
        out += _len_field(8, frame.payload)
    if frame.log_id_new is not None:
        out += _len_field(9, frame.log_id_new.encode())
    return bytes(out)


# -- decoding -------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise FrameDecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise FrameDecodeError("varint too long")


def _fields(buf: bytes):
    """Yield (field_no, wire_type, value) for every field of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field_no, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _WIRE_LEN:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise FrameDecodeError("truncated length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == _WIRE_64BIT:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _WIRE_32BIT:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise FrameDecodeError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise FrameDecodeError("truncated fixed-size field")
        yield field_no, wire, value


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def decode_frame(data: bytes) -> Frame:
    """Parse one websocket binary message; raises FrameDecodeError on malformed input."""
    frame = Frame()
    seen: set[int] = set()
    try:
        for field_no, wire, value in _fields(bytes(data)):
            seen.add(field_no)
            if field_no == 1 and wire == _WIRE_VARINT:
                frame.seq_id = value
            elif field_no == 2 and wire == _WIRE_VARINT:
                frame.log_id = value
            elif field_no == 3 and wire == _WIRE_VARINT:
                frame.service = _int32(value)
            elif field_no == 4 and wire == _WIRE_VARINT:
                frame.method = _int32(value)
            elif field_no == 5 and wire == _WIRE_LEN:
                key = val = ""
                for h_no, h_wire, h_value in _fields(value):
                    if h_no == 1 and h_wire == _WIRE_LEN:
                        key = h_value.decode()
                    elif h_no == 2 and h_wire == _WIRE_LEN:
                        val = h_value.decode()
                frame.headers.append((key, val))
            elif field_no == 6 and wire == _WIRE_LEN:
                frame.payload_encoding = value.decode()
            elif field_no == 7 and wire == _WIRE_LEN:
                frame.payload_type = value.decode()
            elif field_no == 8 and wire == _WIRE_LEN:
                frame.payload = bytes(value)
            elif field_no == 9 and wire == _WIRE_LEN:
                frame.log_id_new = value.decode()
    except UnicodeDecodeError as exc:
        raise FrameDecodeError(f"invalid utf-8 in string field: {exc}") from exc
    missing = {1, 2, 3, 4} - seen
    if missing:
        raise FrameDecodeError(f"missing required fields {sorted(missing)}")
    return frame


# -- the frames a Feishu server sends -------------------------------------------------------


def pong_frame(service: int, client_config: dict[str, float]) -> Frame:
    """The answer to a client ping: a control frame whose payload is the ClientConfig JSON.

    The SDK replaces all four of its settings with the payload (``Client._configure``), so the
    dict must carry ReconnectCount, ReconnectInterval, ReconnectNonce and PingInterval.
    """
    return Frame(
        service=service,
        method=METHOD_CONTROL,
        headers=[(HEADER_TYPE, "pong")],
        payload=json.dumps(client_config).encode(),
    )


def event_frames(
    payload: bytes,
    *,
    service: int,
    frame_message_id: str,
    trace_id: str,
    seq_id: int,
    fragments: int = 1,
) -> list[Frame]:
    """Split one event payload into `fragments` data frames sharing `frame_message_id`.

    The SDK reassembles by (message_id, seq) with ``seq`` counted from 0 and acks once, after
    the last missing part arrives (``Client._combine``).
    """
    if fragments < 1:
        raise ValueError("fragments must be >= 1")
    fragments = min(fragments, max(1, len(payload)))
    size, extra = divmod(len(payload), fragments)
    parts: list[bytes] = []
    pos = 0
    for i in range(fragments):
        end = pos + size + (1 if i < extra else 0)
        parts.append(payload[pos:end])
        pos = end
    return [
        Frame(
            seq_id=seq_id + i,
            log_id=seq_id + i,
            service=service,
            method=METHOD_DATA,
            headers=[
                (HEADER_TYPE, "event"),
                (HEADER_MESSAGE_ID, frame_message_id),
                (HEADER_TRACE_ID, trace_id),
                (HEADER_SUM, str(fragments)),
                (HEADER_SEQ, str(i)),
            ],
            payload=part,
        )
        for i, part in enumerate(parts)
    ]
