"""The eStargz footer: a 51-byte empty gzip member whose Extra field carries the TOC offset."""

from __future__ import annotations

import struct
from typing import Final

from accel.errors import FormatError

FOOTER_SIZE: Final = 51
LEGACY_FOOTER_SIZE: Final = 47

# Go's gzip writer with FEXTRA, MTIME 0, XFL 0, OS 255, then an empty final stored block, CRC 0, ISIZE 0.
_HEAD: Final = bytes.fromhex("1f8b08040000000000ff1a00") + b"SG" + struct.pack("<H", 22)
_TAIL: Final = b"STARGZ" + bytes.fromhex("010000ffff") + bytes(8)
_LEGACY_HEAD: Final = bytes.fromhex("1f8b08040000000000ff1600")


def encode_footer(toc_offset: int) -> bytes:
    """The byte-exact footer pointing at the TOC member at ``toc_offset``."""
    if not 0 <= toc_offset < 1 << 63:
        raise FormatError(f"TOC offset {toc_offset} out of range")
    footer = _HEAD + b"%016x" % toc_offset + _TAIL
    assert len(footer) == FOOTER_SIZE
    return footer


def _parse_hex(field: bytes) -> int:
    try:
        text = field.decode("ascii")
        value = int(text, 16)
    except (UnicodeDecodeError, ValueError):
        raise FormatError("eStargz footer: TOC offset is not hex") from None
    if not all(c in "0123456789abcdefABCDEF" for c in text) or value >= 1 << 63:
        raise FormatError("eStargz footer: TOC offset is not hex")
    return value


def parse_footer(footer: bytes) -> int:
    """Return the TOC offset of a 51-byte footer, checking what Go's parser checks (and the fixed bytes)."""
    if len(footer) != FOOTER_SIZE:
        raise FormatError(f"eStargz footer: need {FOOTER_SIZE} bytes, got {len(footer)}")
    if footer[:4] != b"\x1f\x8b\x08\x04":
        raise FormatError("eStargz footer: not a gzip header with an Extra field")
    if footer[10:16] != b"\x1a\x00SG\x16\x00":
        raise FormatError("eStargz footer: Extra field is not SG/22")
    if footer[32:38] != b"STARGZ":
        raise FormatError("eStargz footer: missing STARGZ magic")
    if footer[38:] != _TAIL[6:]:
        raise FormatError("eStargz footer: not an empty gzip member")
    return _parse_hex(footer[16:32])


def parse_legacy_footer(footer: bytes) -> int:
    """Return the TOC offset of a 47-byte legacy (CRFS) footer; readers accept it, we never write it."""
    if len(footer) != LEGACY_FOOTER_SIZE:
        raise FormatError(f"legacy stargz footer: need {LEGACY_FOOTER_SIZE} bytes")
    if footer[:4] != b"\x1f\x8b\x08\x04" or footer[10:12] != b"\x16\x00" or footer[28:34] != b"STARGZ":
        raise FormatError("legacy stargz footer: bad magic")
    return _parse_hex(footer[12:28])
