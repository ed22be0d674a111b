"""tar-split metadata (vbatts/tar-split JSON lines): the raw bytes between file payloads, and per file its
name, size and CRC-64 (ISO) of the content, so the original tar can be reassembled byte for byte."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from accel.errors import FormatError

FILE_TYPE: Final = 1
SEGMENT_TYPE: Final = 2
_PADDING_SEGMENT: Final = 1 << 20
# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class TarSplitEntry:
    type: int
    name: bytes = b""
    size: int = 0
    payload: bytes | None = None
    position: int = 0


class TarSplitWriter:
    """Accumulates the JSON lines Go's ``storage.NewJSONPacker`` writes (one object per line)."""

    def __init__(self) -> None:
        self._lines: list[bytes] = []
        self._position = 0

    def _add(self, obj: dict[str, Any]) -> None:
        obj["position"] = self._position
        self._position += 1
        self._lines.append(_ENCODER.encode(obj).encode() + b"\n")

    def segment(self, raw: bytes) -> None:
        """Raw bytes of the stream (headers, padding, end of archive); empty ones are skipped like Go does."""
        if raw:
            self._add({"type": SEGMENT_TYPE, "payload": base64.b64encode(raw).decode("ascii")})

    def trailer(self, raw: bytes) -> None:
        """The bytes after the end-of-archive blocks: 1 MiB segments, then the empty segment Go ends with."""
        for start in range(0, len(raw), _PADDING_SEGMENT):
            self._add(
                {
                    "type": SEGMENT_TYPE,
                    "payload": base64.b64encode(raw[start : start + _PADDING_SEGMENT]).decode(),
                }
            )
        self._add({"type": SEGMENT_TYPE, "payload": ""})

    def file(self, name: bytes, size: int, crc64: bytes | None) -> None:
        obj: dict[str, Any] = {"type": FILE_TYPE}
        try:
            obj["name"] = name.decode("utf-8")
        except UnicodeDecodeError:
            obj["name_raw"] = base64.b64encode(name).decode("ascii")
        if size:
            obj["size"] = size
        obj["payload"] = base64.b64encode(crc64).decode("ascii") if crc64 is not None else None
        self._add(obj)

    def getvalue(self) -> bytes:
        return b"".join(self._lines)


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"tar-split: {what} is not base64")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise FormatError(f"tar-split: {what} is not base64") from None


def parse_tarsplit(data: bytes) -> Iterator[TarSplitEntry]:
    """Decode tar-split JSON lines, checking positions are consecutive."""
    expected = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise FormatError(f"tar-split: invalid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise FormatError("tar-split: entry is not an object")
        kind, position = obj.get("type"), obj.get("position")
        if position != expected:
            raise FormatError(f"tar-split: position {position!r}, want {expected}")
        expected += 1
        if kind == SEGMENT_TYPE:
            yield TarSplitEntry(SEGMENT_TYPE, payload=_b64(obj.get("payload"), "segment"), position=position)
        elif kind == FILE_TYPE:
            if "name_raw" in obj:
                name = _b64(obj["name_raw"], "name_raw")
            else:
                raw_name = obj.get("name", "")
                if not isinstance(raw_name, str):
                    raise FormatError("tar-split: name is not a string")
                name = raw_name.encode("utf-8", "surrogateescape")
            size = obj.get("size", 0)
            if type(size) is not int or size < 0:
                raise FormatError("tar-split: bad size", entry=name.decode("utf-8", "replace"))
            payload = obj.get("payload")
            crc = None if payload is None else _b64(payload, "file payload")
            yield TarSplitEntry(FILE_TYPE, name=name, size=size, payload=crc, position=position)
        else:
            raise FormatError(f"tar-split: unknown entry type {kind!r}")
