"""The eStargz builder: layout, chunking, ordering, options; checked through our reader and verifier."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from accel.content import ContentStore
from accel.errors import FormatError
from accel.formats.chunked import Compressor, MemberWriter, make_compressor
from accel.formats.estargz import (
    DEFAULT_BACKEND,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    BuildOptions,
    BuildResult,
    TOCEntry,
    build,
    build_layout,
    libdeflate_available,
    open_blob,
    verify,
)
from accel.formats.estargz.footer import parse_footer
from tests.support.layers import (
    BINARY_XATTR,
    file_contents,
    gzipped,
    layer_with,
    payload,
    small_layer,
    zstded,
)

CHUNK = 4096  # small chunk size: the same boundary cases as 4 MiB, much faster


def convert(tar: bytes, **options: object) -> tuple[bytes, BuildResult]:
    out = io.BytesIO()
    result = build(io.BytesIO(tar), out, BuildOptions(**options))  # type: ignore[arg-type]
    return out.getvalue(), result


def entries_of(blob: bytes) -> list[TOCEntry]:
    return open_blob(blob).entries


def sized_layer() -> bytes:
    return layer_with(
        [
            ("d/", tarfile.DIRTYPE, b""),
            ("d/exact", tarfile.REGTYPE, payload(CHUNK, 1)),
            ("d/plus1", tarfile.REGTYPE, payload(CHUNK + 1, 2)),
            ("d/three", tarfile.REGTYPE, payload(2 * CHUNK + 100, 3)),
            ("d/small", tarfile.REGTYPE, b"x"),
            ("d/empty", tarfile.REGTYPE, b""),
        ]
    )


def test_result_describes_the_blob() -> None:
    tar = small_layer()
    blob, result = convert(tar)
    assert result.compressed_size == len(blob)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    plain = gzip.decompress(blob)
    assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert result.uncompressed_size == len(plain)
    assert result.annotations == {
        TOC_DIGEST_ANNOTATION: result.toc_digest,
        UNCOMPRESSED_SIZE_ANNOTATION: str(len(plain)),
    }
    assert result.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    checked = verify(blob, result.toc_digest)
    assert (checked.diff_id, checked.uncompressed_size) == (result.diff_id, result.uncompressed_size)


def test_layout_entry_point_takes_the_compressor_toc_ending_and_media_type() -> None:
    """What a sibling format (zstd:chunked's stargz flavour) builds on: the media type is the caller's
    typed argument, and only the TOC writer's own annotations join the eStargz ones."""
    seen: list[bytes] = []

    def write_toc(writer: MemberWriter, compressor: Compressor, toc_json: bytes) -> dict[str, str]:
        seen.append(toc_json)
        writer.write_raw(compressor.compress([toc_json]))
        return {"example.toc-size": str(len(toc_json))}

    out = io.BytesIO()
    opts = BuildOptions(chunk_size=CHUNK)
    result = build_layout(
        io.BytesIO(small_layer()),
        out,
        opts,
        compressor=make_compressor("isal"),
        write_toc=write_toc,
        media_type="application/example",
    )
    assert result.media_type == "application/example"
    assert result.annotations == {
        TOC_DIGEST_ANNOTATION: "sha256:" + hashlib.sha256(seen[0]).hexdigest(),
        UNCOMPRESSED_SIZE_ANNOTATION: str(result.uncompressed_size),
        "example.toc-size": str(len(seen[0])),
    }
    blob = out.getvalue()
    assert gzip.decompress(blob).endswith(seen[0])  # the members, then the TOC member it wrote
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_layout_landmark_first_toc_last_footer_points_at_toc_member() -> None:
    blob, _ = convert(small_layer())
    entries = entries_of(blob)
    assert entries[0].name == NO_PREFETCH_LANDMARK
    assert [e.name for e in entries].count(NO_PREFETCH_LANDMARK) == 1
    toc_offset = parse_footer(blob[-51:])
    member = gzip.decompress(blob[toc_offset:-51])
    assert member[:17] == b"stargz.index.json"
    assert member.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        names = tf.getnames()
    assert names[0] == NO_PREFETCH_LANDMARK and names[-1] == "stargz.index.json"


def test_every_chunk_starts_a_gzip_member_at_its_offset() -> None:
    blob, _ = convert(sized_layer(), chunk_size=CHUNK)
    contents = file_contents(sized_layer())
    owner = ""
    for e in entries_of(blob):
        if e.type == "reg" and e.size:
            owner = e.name
        if e.type in ("reg", "chunk") and (e.size or e.type == "chunk"):
            obj = zlib_member(blob, e.offset)
            want = contents.get(owner, b"\x0f")[e.chunkOffset : e.chunkOffset + (e.chunkSize or CHUNK)]
            assert obj.startswith(want)


def zlib_member(blob: bytes, offset: int) -> bytes:
    import zlib

    return zlib.decompressobj(31).decompress(blob[offset:])


def test_chunk_boundaries_follow_the_reference() -> None:
    blob, _ = convert(sized_layer(), chunk_size=CHUNK)
    got = [
        (e.name, e.type, e.size, e.chunkOffset, e.chunkSize)
        for e in entries_of(blob)
        if e.name.startswith("d/")
    ]
    assert got == [
        ("d/", "dir", 0, 0, 0),
        ("d/exact", "reg", CHUNK, 0, CHUNK),
        ("d/plus1", "reg", CHUNK + 1, 0, CHUNK),
        ("d/plus1", "chunk", 0, CHUNK, 0),
        ("d/three", "reg", 2 * CHUNK + 100, 0, CHUNK),
        ("d/three", "chunk", 0, CHUNK, CHUNK),
        ("d/three", "chunk", 0, 2 * CHUNK, 0),
        ("d/small", "reg", 1, 0, 0),
        ("d/empty", "reg", 0, 0, 0),
    ]
    by_name = {e.name: e for e in entries_of(blob) if e.type == "reg"}
    assert by_name["d/empty"].digest == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert by_name["d/empty"].offset == 0 and by_name["d/empty"].chunkDigest == ""
    assert by_name["d/small"].digest == by_name["d/small"].chunkDigest
    three = file_contents(sized_layer())["d/three"]
    assert by_name["d/three"].digest == "sha256:" + hashlib.sha256(three).hexdigest()
    verify(blob, open_blob(blob).toc_digest)


def test_min_chunk_size_merges_a_short_last_piece() -> None:
    blob, result = convert(sized_layer(), chunk_size=CHUNK, min_chunk_size=200)
    got = [
        (e.name, e.type, e.chunkOffset, e.chunkSize)
        for e in entries_of(blob)
        if e.name in ("d/plus1", "d/three")
    ]
    assert got == [("d/plus1", "reg", 0, 0), ("d/three", "reg", 0, CHUNK), ("d/three", "chunk", CHUNK, 0)]
    verify(blob, result.toc_digest)


BACKENDS = [
    "zlib-ng",
    "isal",
    pytest.param(
        "libdeflate",
        marks=pytest.mark.skipif(not libdeflate_available(), reason="libdeflate0 is not installed"),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_does_not_depend_on_threads(backend: str) -> None:
    tar = sized_layer()
    one, r1 = convert(tar, chunk_size=CHUNK, threads=1, backend=backend)
    two, r2 = convert(tar, chunk_size=CHUNK, threads=3, backend=backend)
    assert one == two and r1 == r2
    assert verify(one, r1.toc_digest).diff_id == r1.diff_id


def test_regular_file_input_is_read_in_place_from_its_position(tmp_path: Path) -> None:
    tar = sized_layer()
    path = tmp_path / "layer"
    path.write_bytes(b"x" * 1000 + tar)
    out = io.BytesIO()
    with path.open("rb") as src:
        src.seek(1000)
        result = build(src, out, BuildOptions(chunk_size=CHUNK))
    assert (out.getvalue(), result) == convert(tar, chunk_size=CHUNK)


def test_default_backend_is_libdeflate_when_the_system_has_it() -> None:
    assert ("libdeflate" if libdeflate_available() else "zlib-ng") == DEFAULT_BACKEND
    assert BuildOptions().backend == DEFAULT_BACKEND


@pytest.mark.skipif(not libdeflate_available(), reason="libdeflate0 is not installed")
@pytest.mark.parametrize("level", [0, 1, 12])
def test_libdeflate_members_are_plain_gzip(level: int) -> None:
    blob, result = convert(sized_layer(), chunk_size=CHUNK, backend="libdeflate", compression_level=level)
    plain = gzip.decompress(blob)  # every member, the footer's empty one included
    assert len(plain) == result.uncompressed_size
    assert "sha256:" + hashlib.sha256(plain).hexdigest() == result.diff_id
    assert verify(blob, result.toc_digest).diff_id == result.diff_id


@pytest.mark.skipif(not libdeflate_available(), reason="libdeflate0 is not installed")
def test_libdeflate_compressor_takes_any_buffer() -> None:
    compressor = make_compressor("libdeflate", 9)
    data = payload(300_000, 7)
    cases: list[list[bytes | bytearray | memoryview]] = [
        [data],
        [bytearray(data)],
        [memoryview(data)],  # read-only: read in place
        [data[:5], memoryview(bytearray(data[5:]))],
    ]
    for parts in cases:
        assert gzip.decompress(compressor.compress(parts)) == data
    assert gzip.decompress(compressor.compress([b""])) == b""


def test_libdeflate_level_out_of_range_is_refused() -> None:
    with pytest.raises(FormatError, match="libdeflate"):
        convert(small_layer(), backend="libdeflate", compression_level=13)


@pytest.mark.parametrize("wrap", [gzipped, zstded], ids=["gzip", "zstd"])
def test_compressed_input_gives_the_same_blob(wrap: object) -> None:
    tar = small_layer()
    plain, r1 = convert(tar)
    packed, r2 = convert(wrap(tar))  # type: ignore[operator]
    assert plain == packed and r1 == r2


def test_non_seekable_input_is_spooled() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
            return self._src.readinto(buf)

    tar = small_layer()
    out = io.BytesIO()
    result = build(Pipe(tar), out)  # type: ignore[arg-type]
    assert out.getvalue() == convert(tar)[0]
    verify(out.getvalue(), result.toc_digest)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", [1, None])
def test_backends_and_levels_verify(backend: str, level: int | None) -> None:
    blob, result = convert(small_layer(), backend=backend, compression_level=level)
    assert verify(blob, result.toc_digest).diff_id == result.diff_id


def test_duplicates_keep_the_last_at_its_position_and_old_landmarks_are_dropped() -> None:
    tar = layer_with(
        [
            ("a", tarfile.REGTYPE, b"first"),
            (".no.prefetch.landmark", tarfile.REGTYPE, b"\x0f"),
            ("stargz.index.json", tarfile.REGTYPE, b"{}"),
            ("b", tarfile.REGTYPE, b"b"),
            ("./a", tarfile.REGTYPE, b"second"),
        ]
    )
    blob, result = convert(tar)
    assert [e.name for e in entries_of(blob)] == [NO_PREFETCH_LANDMARK, "b", "./a"]
    verify(blob, result.toc_digest)
    assert file_contents(gzip.decompress(blob))["a"] == b"second"


class _Sink(io.RawIOBase):
    """A write-only stream that cannot seek: the builder must index the whole layer before writing."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def duplicate_layer() -> bytes:
    return layer_with(
        [
            ("d/", tarfile.DIRTYPE, b""),
            ("d/big", tarfile.REGTYPE, payload(3 * CHUNK, 4)),
            ("d/small", tarfile.REGTYPE, b"old"),
            ("d/other", tarfile.REGTYPE, payload(CHUNK + 7, 5)),
            ("./d/small", tarfile.REGTYPE, b"new"),
            ("d/last", tarfile.REGTYPE, b"last"),
        ]
    )


@pytest.mark.parametrize("layer", [sized_layer, duplicate_layer, small_layer])
def test_writing_while_parsing_gives_the_indexed_output(layer: object) -> None:
    tar = layer()  # type: ignore[operator]
    streamed, r1 = convert(tar, chunk_size=CHUNK)
    sink = _Sink()
    r2 = build(io.BytesIO(tar), sink, BuildOptions(chunk_size=CHUNK))  # type: ignore[arg-type]
    assert streamed == bytes(sink.data) and r1 == r2
    verify(streamed, r1.toc_digest)


def test_a_duplicate_path_rewinds_only_this_blob() -> None:
    out = io.BytesIO()
    out.write(b"kept")
    result = build(io.BytesIO(duplicate_layer()), out, BuildOptions(chunk_size=CHUNK))
    blob = out.getvalue()
    assert blob[:4] == b"kept" and len(blob) == 4 + result.compressed_size
    assert blob[4:] == convert(duplicate_layer(), chunk_size=CHUNK)[0]
    assert file_contents(gzip.decompress(blob[4:]))["d/small"] == b"new"


def test_a_duplicate_path_restarts_a_content_store_blob(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with store.writer() as sink:
        assert sink.seekable()
        result = build(io.BytesIO(duplicate_layer()), sink, BuildOptions(chunk_size=CHUNK))
        digest, size = sink.commit()
    blob = store.read_bytes(digest)
    assert (digest, size) == (result.digest, result.compressed_size)
    assert blob == convert(duplicate_layer(), chunk_size=CHUNK)[0]


def test_compressed_input_larger_than_one_read_is_mapped_as_it_is_spooled() -> None:
    # ~6 MB of files: the spool grows in several steps while the first files are already compressed.
    tar = layer_with([(f"f{i}", tarfile.REGTYPE, payload(150_000 + i, i)) for i in range(40)])
    plain, r1 = convert(tar)
    packed, r2 = convert(gzipped(tar))
    assert plain == packed and r1 == r2
    verify(packed, r2.toc_digest)


def prio_layer() -> bytes:
    return layer_with(
        [
            ("usr/", tarfile.DIRTYPE, b""),
            ("usr/bin/", tarfile.DIRTYPE, b""),
            ("usr/bin/tool", tarfile.REGTYPE, b"tool"),
            ("etc/", tarfile.DIRTYPE, b""),
            ("etc/hostname", tarfile.REGTYPE, b"h"),
            ("data/file", tarfile.REGTYPE, b"no parent entry"),
            ("z", tarfile.REGTYPE, b"z"),
        ]
    )


def test_prioritized_files_come_first_with_parents_then_the_landmark() -> None:
    blob, result = convert(prio_layer(), prioritized_files=("/etc/hostname", "./usr/bin/tool", "data/file"))
    names = [e.name for e in entries_of(blob)]
    assert names == [
        "etc/", "etc/hostname", "usr/", "usr/bin/", "usr/bin/tool", "data/file", PREFETCH_LANDMARK, "z",
    ]  # fmt: skip
    verify(blob, result.toc_digest)


def test_prioritized_hardlink_brings_its_target() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        target = tarfile.TarInfo("t")
        target.size = 1
        tf.addfile(target, io.BytesIO(b"t"))
        tf.addfile(tarfile.TarInfo("other"))
        link = tarfile.TarInfo("l")
        link.type, link.linkname = tarfile.LNKTYPE, "t"
        tf.addfile(link)
    blob, _ = convert(buf.getvalue(), prioritized_files=("l",))
    assert [e.name for e in entries_of(blob)][:3] == ["t", "l", PREFETCH_LANDMARK]


def test_missing_prioritized_file_fails_or_is_reported() -> None:
    with pytest.raises(FormatError) as err:
        convert(prio_layer(), prioritized_files=("nope",))
    assert err.value.entry == "nope"
    blob, result = convert(prio_layer(), prioritized_files=("nope", "z"), allow_prioritize_not_found=True)
    assert result.missed_prioritized == ["nope"]
    assert [e.name for e in entries_of(blob)][:2] == ["z", PREFETCH_LANDMARK]


def test_metadata_in_the_toc() -> None:
    blob, _ = convert(small_layer())
    by_name = {e.name: e for e in entries_of(blob) if e.type != "chunk"}
    assert by_name["usr/bin/suid"].mode == 0o4755
    assert by_name["tmp/"].mode == 0o1777
    assert by_name["dev/null"].type == "char" and (
        by_name["dev/null"].devMajor,
        by_name["dev/null"].devMinor,
    ) == (1, 3)
    assert by_name["run/fifo"].type == "fifo"
    assert by_name["usr/bin/link-to-suid"].linkName == "usr/bin/suid"
    assert by_name["times/zero"].modtime == ""
    assert by_name["times/fraction-up"].modtime == "2023-11-14T22:13:21Z"
    assert by_name["xattr/file"].xattrs == {
        "user.text": b"hello world",
        "user.empty": b"",
        "security.capability": BINARY_XATTR,
    }
    assert by_name["usr/bin/"].userName == "alice"
    # the name is emitted once per uid, the reader back-fills later ones
    assert by_name["usr/bin/owned"].userName == ""


def test_zstd_backend_is_refused_for_estargz() -> None:
    with pytest.raises(FormatError):
        convert(small_layer(), backend="zstd")


def test_zstd_frames_are_not_mistaken_for_tar() -> None:
    # A zstd stream of garbage is a format error, not a crash.
    with pytest.raises(FormatError):
        convert(zstandard.ZstdCompressor().compress(b"\x01" * 2048))


@pytest.mark.parametrize("data", [b"", bytes(1024), bytes(10240)], ids=["nothing", "eoa", "record"])
def test_empty_layers_convert(data: bytes) -> None:
    blob, result = convert(data)
    assert [e.name for e in entries_of(blob)] == [NO_PREFETCH_LANDMARK]
    assert verify(blob, result.toc_digest).diff_id == result.diff_id
