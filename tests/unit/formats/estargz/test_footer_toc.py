"""Footer bytes and TOC JSON."""

from __future__ import annotations

import gzip
import json

import pytest

from accel.errors import FormatError
from accel.formats.estargz import TOCEntry, decode_toc, encode_footer, encode_toc, parse_footer
from accel.formats.estargz.footer import parse_legacy_footer
from accel.formats.estargz.toc import clean_name, format_modtime

ZERO = "sha256:" + "0" * 64
SPEC_FOOTER = (
    "1f8b08040000000000ff1a00534716003030303030303030303063303264313153544152475a010000ffff0000000000000000"
)


def test_footer_is_the_spec_bytes_and_an_empty_gzip_member() -> None:
    footer = encode_footer(0xC02D11)
    assert footer.hex() == SPEC_FOOTER
    assert len(footer) == 51
    assert gzip.decompress(footer) == b""
    assert parse_footer(footer) == 0xC02D11


@pytest.mark.parametrize("offset", [0, 1, 12594449, (1 << 63) - 1])
def test_footer_round_trip(offset: int) -> None:
    assert parse_footer(encode_footer(offset)) == offset


@pytest.mark.parametrize(
    ("index", "value"),
    [(0, 0x1E), (12, ord("X")), (14, 0x17), (20, ord("g")), (33, ord("x")), (45, 1)],
)
def test_footer_parser_rejects_damage(index: int, value: int) -> None:
    footer = bytearray(encode_footer(4096))
    footer[index] = value
    with pytest.raises(FormatError):
        parse_footer(bytes(footer))


def test_footer_parser_rejects_wrong_length() -> None:
    with pytest.raises(FormatError):
        parse_footer(encode_footer(5)[:-1])


def test_legacy_footer_is_read() -> None:
    legacy = (
        bytes.fromhex("1f8b08040000000000ff1600")
        + b"%016xSTARGZ" % 777
        + bytes.fromhex("010000ffff")
        + bytes(8)
    )
    assert len(legacy) == 47
    assert parse_legacy_footer(legacy) == 777


@pytest.mark.parametrize(
    ("secs", "nsec", "want"),
    [
        (1700000000, 600_000_000, "2023-11-14T22:13:21Z"),
        (1700000000, 400_000_000, "2023-11-14T22:13:20Z"),
        (1700000000, 500_000_000, "2023-11-14T22:13:21Z"),
        (0, 0, ""),
        (0, 900_000_000, ""),  # Go checks Unix() == 0 before rounding
        (-1, 0, "1969-12-31T23:59:59Z"),
        (1, 0, "1970-01-01T00:00:01Z"),
    ],
)
def test_modtime_rules(secs: int, nsec: int, want: str) -> None:
    assert format_modtime(secs, nsec) == want


@pytest.mark.parametrize(
    ("name", "want"), [("./a//b/../c/", "a/c"), ("/x", "x"), ("../../etc", "etc"), ("./", ""), ("//y", "y")]
)
def test_clean_name_matches_go_path_clean(name: str, want: str) -> None:
    assert clean_name(name) == want


def test_toc_round_trip_omits_zero_fields_and_base64_xattrs() -> None:
    entries = [
        TOCEntry(name="a/", type="dir", mode=0o755),
        TOCEntry(
            name="a/f", type="reg", size=3, offset=10, digest=ZERO, chunkDigest=ZERO,
            xattrs={"user.bin": b"\x00\xff", "user.empty": b""},
        ),
    ]  # fmt: skip
    raw = encode_toc(entries)
    doc = json.loads(raw)
    assert doc["version"] == 1
    assert doc["entries"][0] == {"name": "a/", "type": "dir", "mode": 493}
    assert doc["entries"][1]["xattrs"] == {"user.bin": "AP8=", "user.empty": ""}
    assert decode_toc(raw) == entries


def test_toc_decoder_is_case_insensitive_like_go() -> None:
    raw = b'{"Version":1,"Entries":[{"NAME":"x","Type":"reg","SIZE":4,"ChunkDigest":"sha256:ab"}]}'
    (entry,) = decode_toc(raw)
    assert (entry.name, entry.size, entry.chunkDigest) == ("x", 4, "sha256:ab")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"version":2,"entries":[]}',
        b'{"version":1,"entries":{}}',
        b'{"version":1,"entries":[{"name":"x","type":"reg","size":1.5}]}',
        b'{"version":1,"entries":[{"name":"x","type":"reg","size":"1"}]}',
        b'{"version":1,"entries":[{"name":"x","type":"reg","xattrs":{"a":"!!"}}]}',
        b"[1]",
        b"not json",
    ],
)
def test_toc_decoder_rejects_bad_documents(raw: bytes) -> None:
    with pytest.raises(FormatError):
        decode_toc(raw)
