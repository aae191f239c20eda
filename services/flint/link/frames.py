"""The engine link's frames: what travels between a front-end worker and an engine replica on one connection.

A frame is a 13-byte header (payload length u32, kind u8, request id u64; big-endian) and its payload. The
payloads reuse the protobuf bytes of the internal API as they are: a REQUEST carries a serialized
`GenerateRequest` (after the call's metadata), an EVENT a serialized `GenerateEvent`; nothing is encoded
twice. Request id 0 is the connection's own (HELLO, PING, PONG, a refusal).

    worker -> replica: HELLO (the internal token, first frame of a connection), REQUEST, CANCEL, PING,
                       PAUSE / RESUME (a request's events, while its call's queue is full)
    replica -> worker: EVENT, END (status code, details, retry delay), PONG; END with id 0 refuses the connection

A payload larger than `MAX_FRAME_BYTES` (the gRPC channels' 64 MiB message limit) is never sent, and a header
announcing one ends the connection: the reader cannot trust the stream after it.
"""

from __future__ import annotations

import struct

import msgpack

HEADER = struct.Struct(">IBQ")
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_HELLO_BYTES = 1024   # a connection's first frame: nobody unauthenticated gets to send more

HELLO, REQUEST, CANCEL, EVENT, END, PING, PONG, PAUSE, RESUME = range(1, 10)
KINDS = frozenset((HELLO, REQUEST, CANCEL, EVENT, END, PING, PONG, PAUSE, RESUME))
_METADATA_LENGTH = struct.Struct(">H")
OK = 0   # END's status code of a call that finished (grpc.StatusCode.OK's number)


class FrameError(Exception):
    """The peer broke the framing (an unknown kind, an oversized frame): the connection cannot go on."""


def frame(kind: int, request_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), kind, request_id) + payload


def request_payload(body: bytes, metadata) -> bytes:
    """A REQUEST's payload: the call's metadata pairs (msgpack, length-prefixed) then the GenerateRequest bytes."""
    packed = msgpack.packb([list(pair) for pair in metadata or ()]) if metadata else b"\x90"
    return _METADATA_LENGTH.pack(len(packed)) + packed + body


def split_request(payload: bytes) -> tuple[tuple, bytes]:
    """(metadata pairs, GenerateRequest bytes) of a REQUEST's payload."""
    (size,) = _METADATA_LENGTH.unpack_from(payload, 0)
    end = _METADATA_LENGTH.size + size
    pairs = msgpack.unpackb(payload[_METADATA_LENGTH.size:end]) if size > 1 else ()
    return tuple((str(key), value) for key, value in pairs), payload[end:]


def end_payload(code: int, details: str = "", retry_after_ms: int = 0) -> bytes:
    return msgpack.packb((code, details, retry_after_ms))


def split_end(payload: bytes) -> tuple[int, str, int]:
    code, details, retry_after_ms = msgpack.unpackb(payload)
    return int(code), str(details), int(retry_after_ms)


class FrameReader:
    """Cuts a byte stream into frames: `push(data)`, then `next()` until it returns None (no whole frame left).
    Frames not taken yet stay in the buffer as bytes, so a reader that stops taking them holds at most what
    was pushed."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES):
        self._buffer = bytearray()
        self._start = 0
        self.max_frame_bytes = max_frame_bytes

    def push(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> tuple[int, int, bytes] | None:
        """The next whole frame (kind, request id, payload), or None."""
        buffer, start = self._buffer, self._start
        if len(buffer) - start >= HEADER.size:
            length, kind, request_id = HEADER.unpack_from(buffer, start)
            if kind not in KINDS:
                raise FrameError(f"unknown frame kind {kind}")
            if length > self.max_frame_bytes:
                raise FrameError(f"a frame of {length} bytes (at most {self.max_frame_bytes})")
            end = start + HEADER.size + length
            if end <= len(buffer):
                self._start = end
                return kind, request_id, bytes(buffer[start + HEADER.size:end])
        if start:
            del buffer[:start]
            self._start = 0
        return None
