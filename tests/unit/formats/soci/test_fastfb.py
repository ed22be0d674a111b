"""The lean flatbuffer writer gives the same bytes as the flatbuffers runtime with soci's call order."""

from __future__ import annotations

import random

import flatbuffers
import pytest

from accel.formats.soci import FileMetadata, Ztoc, read_ztoc
from accel.formats.soci.ztoc import marshal

from .conftest import DATA, SPAN, ZTOC_FIXTURES


def _reference(ztoc: Ztoc) -> bytes:
    """soci's ``ztocToFlatbuffer`` call sequence on the flatbuffers runtime's Builder."""
    b = flatbuffers.Builder(0)

    def s(value: str) -> int:
        return int(b.CreateString(value.encode("utf-8", "surrogateescape")))

    def vector(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return int(b.EndVector())

    version, tool = s(ztoc.version), s(ztoc.build_tool_identifier)
    offsets = [0] * len(ztoc.toc)
    for i in range(len(ztoc.toc) - 1, -1, -1):
        me = ztoc.toc[i]
        strings = [s(x) for x in (me.name, me.type, me.linkname, me.uname, me.gname, me.mod_time)]
        xattrs = []
        for key in sorted(me.pax_records, key=lambda k: k.encode("utf-8", "surrogateescape")):
            k, v = s(key), s(me.pax_records[key])
            b.StartObject(2)
            b.PrependUOffsetTRelativeSlot(0, k, 0)
            b.PrependUOffsetTRelativeSlot(1, v, 0)
            xattrs.append(b.EndObject())
        xv = vector(xattrs)
        b.StartObject(14)
        b.PrependUOffsetTRelativeSlot(0, strings[0], 0)
        b.PrependUOffsetTRelativeSlot(1, strings[1], 0)
        b.PrependInt64Slot(2, me.uncompressed_offset, 0)
        b.PrependInt64Slot(3, me.uncompressed_size, 0)
        b.PrependUOffsetTRelativeSlot(4, strings[2], 0)
        b.PrependInt64Slot(5, me.mode, 0)
        b.PrependUint32Slot(6, me.uid & 0xFFFFFFFF, 0)
        b.PrependUint32Slot(7, me.gid & 0xFFFFFFFF, 0)
        b.PrependUOffsetTRelativeSlot(8, strings[3], 0)
        b.PrependUOffsetTRelativeSlot(9, strings[4], 0)
        b.PrependUOffsetTRelativeSlot(10, strings[5], 0)
        b.PrependInt64Slot(11, me.devmajor, 0)
        b.PrependInt64Slot(12, me.devminor, 0)
        b.PrependUOffsetTRelativeSlot(13, xv, 0)
        offsets[i] = b.EndObject()
    metadata = vector(offsets)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, metadata, 0)
    toc = b.EndObject()
    checkpoints = b.CreateByteVector(ztoc.checkpoints)
    digests = vector([s(d) for d in ztoc.span_digests])
    b.StartObject(4)
    b.PrependInt32Slot(1, ztoc.max_span_id, 0)
    b.PrependUOffsetTRelativeSlot(2, digests, 0)
    b.PrependUOffsetTRelativeSlot(3, checkpoints, 0)
    b.PrependInt8Slot(0, 1 if ztoc.compression_algorithm == "gzip" else 2, 1)
    info = b.EndObject()
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, version, 0)
    b.PrependUOffsetTRelativeSlot(1, tool, 0)
    b.PrependUOffsetTRelativeSlot(4, toc, 0)
    b.PrependInt64Slot(2, ztoc.compressed_archive_size, 0)
    b.PrependInt64Slot(3, ztoc.uncompressed_archive_size, 0)
    b.PrependUOffsetTRelativeSlot(5, info, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


@pytest.mark.parametrize(("name", "layer", "compression"), ZTOC_FIXTURES)
def test_fixtures(name: str, layer: str, compression: str) -> None:
    ztoc = read_ztoc((DATA / "ztoc" / f"{name}.span{SPAN}.ztoc").read_bytes())
    assert marshal(ztoc) == _reference(ztoc)


@pytest.mark.parametrize("seed", range(8))
def test_random_ztocs(seed: int) -> None:
    rnd = random.Random(seed)

    def text(n: int) -> str:
        raw = bytes(rnd.choice(b"ab/\xc3\xa9\xff.") for _ in range(rnd.randrange(n)))
        return raw.decode("utf-8", "surrogateescape")

    toc = []
    for _ in range(rnd.randrange(1, 60)):
        pax = {text(12) or "k": text(40) for _ in range(rnd.choice([0, 0, 1, 3]))}
        toc.append(
            FileMetadata(
                name=text(30),
                type=rnd.choice(["reg", "dir", "symlink"]),
                uncompressed_offset=rnd.choice([0, 512, rnd.randrange(1 << 40)]),
                uncompressed_size=rnd.choice([0, 1, rnd.randrange(1 << 33)]),
                linkname=text(5),
                mode=rnd.choice([0, 0o644, -1]),
                uid=rnd.choice([0, 1000, 1 << 33]),
                gid=rnd.choice([0, 5]),
                uname=text(4),
                gname=text(4),
                mod_time=rnd.choice(["", "2023-11-14T22:13:20Z", "2023-11-14T22:13:20.5Z"]),
                devmajor=rnd.choice([0, 8]),
                devminor=rnd.choice([0, 1]),
                pax_records=pax,
            )
        )
    ztoc = Ztoc(
        version="0.9",
        build_tool_identifier=text(20),
        compressed_archive_size=rnd.randrange(1 << 35),
        uncompressed_archive_size=rnd.choice([0, rnd.randrange(1 << 35)]),
        toc=toc,
        compression_algorithm=rnd.choice(["gzip", "uncompressed"]),
        max_span_id=rnd.choice([0, 3]),
        span_digests=[f"sha256:{rnd.randrange(1 << 256):064x}" for _ in range(rnd.randrange(5))],
        checkpoints=rnd.randbytes(rnd.randrange(1, 300)),
    )
    assert marshal(ztoc) == _reference(ztoc)
