"""The Go-compatible tar reader: fields as Go reports them, exact offsets, sparse files, errors."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.formats.tar import TarEntry, TarReader, check_safe, clean_path

HAVE_GNU_TAR = shutil.which("tar") is not None


class _Pipe(io.RawIOBase):
    """A non-seekable stream that hands out at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int = 777) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def,override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _entries(data: bytes, *, pipe: bool = False) -> tuple[list[tuple[TarEntry, bytes]], TarReader]:
    reader = TarReader(_Pipe(data) if pipe else io.BytesIO(data))  # type: ignore[arg-type]
    out = [(entry, reader.read()) for entry in reader]
    return out, reader


def _check_layout(data: bytes, entries: list[tuple[TarEntry, bytes]], reader: TarReader) -> None:
    """Offsets agree with the raw bytes and the pieces reassemble the stream exactly."""
    pos = 0
    for entry, _content in entries:
        assert entry.header_offset == pos
        assert data[entry.header_offset : entry.data_offset] == entry.raw_header
        pos = entry.end_offset
    assert data[pos:] == reader.trailer
    assert reader.offset == len(data)


def _header(
    name: bytes,
    *,
    typ: bytes = b"0",
    size: bytes | None = None,
    magic: bytes = b"ustar\x0000",
    uid: bytes = b"0000000\x00",
    linkname: bytes = b"",
    extra: dict[int, bytes] | None = None,
    bad_checksum: bool = False,
) -> bytes:
    """A hand-made header block (for corners no tool writes on demand)."""
    blk = bytearray(512)
    blk[0 : len(name)] = name
    blk[100:108] = b"0000644\x00"
    blk[108:116] = uid
    blk[116:124] = b"0000000\x00"
    blk[124:136] = size if size is not None else b"00000000000\x00"
    blk[136:148] = b"14500000000\x00"
    blk[156:157] = typ
    blk[157 : 157 + len(linkname)] = linkname
    blk[257:265] = magic
    for off, value in (extra or {}).items():
        blk[off : off + len(value)] = value
    blk[148:156] = b" " * 8
    chk = sum(blk) + (1 if bad_checksum else 0)
    blk[148:156] = b"%06o\x00 " % chk
    return bytes(blk)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


END = bytes(1024)


# -- archives written by Python's tarfile -------------------------------------------------------------


def _tarfile_archive(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        d = tarfile.TarInfo("dir/")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)
        f = tarfile.TarInfo("dir/file.txt")
        f.size = 5
        f.mtime = 1700000000
        f.uid, f.gid, f.uname, f.gname = 1000, 1001, "alice", "staff"
        tar.addfile(f, io.BytesIO(b"hello"))
        h = tarfile.TarInfo("dir/hard")
        h.type, h.linkname = tarfile.LNKTYPE, "dir/file.txt"
        tar.addfile(h)
        s = tarfile.TarInfo("dir/sym")
        s.type, s.linkname = tarfile.SYMTYPE, "file.txt"
        tar.addfile(s)
        c = tarfile.TarInfo("dev/null")
        c.type, c.devmajor, c.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(c)
        b = tarfile.TarInfo("dev/loop0")
        b.type, b.devmajor, b.devminor = tarfile.BLKTYPE, 7, 0
        tar.addfile(b)
        p = tarfile.TarInfo("fifo")
        p.type = tarfile.FIFOTYPE
        tar.addfile(p)
        big = tarfile.TarInfo("x" * 130 + "/" + "y" * 40)
        big.size = 1000
        tar.addfile(big, io.BytesIO(bytes(range(200)) * 5))
        link = tarfile.TarInfo("longlink")
        link.type, link.linkname = tarfile.SYMTYPE, "t" * 150
        tar.addfile(link)
        uni = tarfile.TarInfo("h\u00e9llo/w\u00f6rld")
        uni.size = 1
        tar.addfile(uni, io.BytesIO(b"!"))
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "expect"), [(tarfile.GNU_FORMAT, "gnu"), (tarfile.PAX_FORMAT, "pax")])
def test_tarfile_archives(fmt: int, expect: str) -> None:
    data = _tarfile_archive(fmt)
    entries, reader = _entries(data)
    by_name = {e.name: (e, c) for e, c in entries}
    _check_layout(data, entries, reader)

    d, _ = by_name["dir/"]
    assert d.is_dir and d.type == b"5" and d.mode == 0o755
    f, content = by_name["dir/file.txt"]
    assert f.is_reg and content == b"hello" and f.size == 5
    assert (f.uid, f.gid, f.uname, f.gname, f.mtime) == (1000, 1001, "alice", "staff", 1700000000)
    assert data[f.data_offset : f.data_offset + 5] == b"hello"
    assert by_name["dir/hard"][0].is_hardlink and by_name["dir/hard"][0].linkname == "dir/file.txt"
    assert by_name["dir/sym"][0].is_symlink and by_name["dir/sym"][0].linkname == "file.txt"
    null = by_name["dev/null"][0]
    assert null.is_chardev and (null.devmajor, null.devminor) == (1, 3)
    assert by_name["dev/loop0"][0].is_blockdev and by_name["dev/loop0"][0].devmajor == 7
    assert by_name["fifo"][0].is_fifo
    long_entry, long_content = by_name["x" * 130 + "/" + "y" * 40]
    assert long_content == bytes(range(200)) * 5
    assert by_name["longlink"][0].linkname == "t" * 150
    assert by_name["h\u00e9llo/w\u00f6rld"][1] == b"!"
    # Meta headers (PAX x / GNU L, K) are folded into the entry they describe and counted in its header.
    assert long_entry.data_offset - long_entry.header_offset > 512
    for entry, _ in entries:
        # Go says "pax" only where a PAX header was needed; plain entries of a PAX archive are USTAR.
        assert entry.format == ("ustar" if expect == "pax" and not entry.pax_records else expect)
    assert any(e.format == expect for e, _ in entries)
    if fmt == tarfile.PAX_FORMAT:
        assert long_entry.pax_records["path"] == long_entry.name
    else:
        assert long_entry.pax_records == {}
    assert reader.eof_offset == entries[-1][0].end_offset + 1024


def test_ustar_prefix_and_format() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("p" * 120 + "/name")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    data = buf.getvalue()
    entries, reader = _entries(data)
    assert [(e.name, e.format, c) for e, c in entries] == [("p" * 120 + "/name", "ustar", b"ok")]
    _check_layout(data, entries, reader)


def test_pax_records_xattrs_and_times() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("caps")
        info.size = 3
        info.pax_headers = {
            "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\udcff\udcfe",
            "SCHILY.xattr.user.empty": "",
            "mtime": "1700000000.123456789123",
            "atime": "-1.5",
            "uid": "70000",
        }
        tar.addfile(info, io.BytesIO(b"abc"))
    data = buf.getvalue()
    ((entry, content),) = _entries(data)[0]
    assert content == b"abc"
    assert entry.mtime == 1700000000 and entry.mtime_nsec == 123456789
    assert entry.atime == (-2, 500000000)  # Go's time.Unix(-1, -5e8)
    assert entry.uid == 70000
    assert entry.xattrs["security.capability"] == b"\x01\x00\x00\x02\xff\xfe"
    assert "user.empty" not in entry.xattrs  # Go's mergePAX skips empty values
    assert entry.pax_records["SCHILY.xattr.user.empty"] == ""
    assert entry.pax_records["mtime"] == "1700000000.123456789123"
    assert entry.format == "pax"


def test_base256_numbers() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("big-ids")
        info.uid, info.gid, info.mtime, info.size = 10**10, 3_000_000, -1000, 4
        tar.addfile(info, io.BytesIO(b"data"))
    data = buf.getvalue()
    assert data[108] & 0x80 and data[136] & 0x80  # really base-256 fields
    ((entry, content),) = _entries(data)[0]
    assert (entry.uid, entry.gid, entry.mtime, content) == (10**10, 3_000_000, -1000, b"data")
    # A base-256 size: 2 bytes of content announced as 0x80 00.. 02.
    blk = _header(b"sized", magic=b"ustar  \x00", size=b"\x80" + bytes(10) + b"\x02")
    ((entry, content),) = _entries(blk + _pad(b"hi") + END)[0]
    assert entry.size == 2 and content == b"hi" and entry.format == "gnu"


def test_legacy_regular_type_and_trailing_slash() -> None:
    data = _header(b"olddir/", typ=b"\x00") + _header(b"oldfile", typ=b"\x00", size=b"00000000001\x00")
    data += _pad(b"z") + END
    entries, reader = _entries(data)
    assert [(e.name, e.type) for e, _ in entries] == [("olddir/", b"5"), ("oldfile", b"0")]
    _check_layout(data, entries, reader)


def test_v7_header() -> None:
    data = _header(b"v7file", magic=bytes(8), size=b"00000000003\x00") + _pad(b"abc") + END
    entries, _ = _entries(data)
    assert [(e.name, e.format, c) for e, c in entries] == [("v7file", "v7", b"abc")]


def test_global_header_is_an_entry() -> None:
    records = b"18 comment=global\n"
    data = _header(b"pax_global_header", typ=b"g", size=b"%011o\x00" % len(records)) + _pad(records)
    data += _header(b"after") + END
    entries, reader = _entries(data)
    assert [(e.name, e.type) for e, _ in entries] == [("pax_global_header", b"g"), ("after", b"0")]
    assert entries[0][0].pax_records == {"comment": "global"}
    _check_layout(data, entries, reader)


def test_header_only_types_ignore_size() -> None:
    # Go reads no content for links/dirs/devices even when the size field says otherwise.
    data = _header(b"link", typ=b"1", size=b"00000001000\x00", linkname=b"target") + _header(b"next") + END
    entries, _ = _entries(data)
    assert [(e.name, e.size, e.data_length) for e, _ in entries] == [("link", 512, 0), ("next", 0, 0)]


def test_non_seekable_stream_and_small_reads() -> None:
    data = _tarfile_archive(tarfile.PAX_FORMAT)
    entries, reader = _entries(data, pipe=True)
    plain, _ = _entries(data)
    assert [(e.name, e.data_offset, c) for e, c in entries] == [(e.name, e.data_offset, c) for e, c in plain]
    _check_layout(data, entries, reader)
    stream = TarReader(io.BytesIO(data))
    for entry in stream:
        if entry.size == 1000:
            first = stream.read(10)
            buf = bytearray(100)
            n = stream.readinto(buf)
            assert first + bytes(buf[:n]) == bytes(range(200))[:110]
            break  # the rest is skipped on the next iteration


def test_trailer_keeps_record_padding() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:  # tarfile pads to a 10 KiB record
        info = tarfile.TarInfo("a")
        tar.addfile(info)
    data = buf.getvalue()
    entries, reader = _entries(data)
    assert len(data) == 10240
    assert reader.eof_offset == 512 + 1024
    assert reader.trailer == bytes(10240 - 512)
    _check_layout(data, entries, reader)


def test_missing_end_of_archive_is_a_clean_end() -> None:
    data = _header(b"a", size=b"00000000001\x00") + _pad(b"x")
    entries, reader = _entries(data)
    assert [e.name for e, _ in entries] == ["a"]
    assert reader.trailer == b""


# -- errors -------------------------------------------------------------------------------------------


def test_truncated_content_names_the_entry() -> None:
    data = _tarfile_archive(tarfile.PAX_FORMAT)
    entries, _ = _entries(data)
    big = next(e for e, _ in entries if e.size == 1000)
    cut = data[: big.data_offset + 500]
    with pytest.raises(FormatError) as err:
        _entries(cut)
    assert err.value.entry == big.name
    reader = TarReader(io.BytesIO(cut))
    for entry in reader:
        if entry.name == big.name:
            with pytest.raises(FormatError):
                reader.read()
            break


def test_truncated_header() -> None:
    data = _tarfile_archive(tarfile.GNU_FORMAT)
    with pytest.raises(FormatError):
        _entries(data[:700])


def test_bad_checksum() -> None:
    data = _header(b"ok") + _header(b"corrupt", bad_checksum=True) + END
    with pytest.raises(FormatError) as err:
        _entries(data)
    assert err.value.entry == "corrupt"
    reader = TarReader(io.BytesIO(data + _header(b"later") + END))
    assert next(reader).name == "ok"
    for _ in range(2):  # the error is sticky
        with pytest.raises(FormatError):
            next(reader)


def test_bad_numbers_and_pax() -> None:
    with pytest.raises(FormatError):
        _entries(_header(b"bad", size=b"0000000009x\x00") + END)  # not octal
    with pytest.raises(FormatError):
        _entries(_header(b"neg", size=b"\xff" * 12) + END)  # base-256 -1
    bad_pax = b"99 path=x\n"
    with pytest.raises(FormatError):
        _entries(
            _header(b"x", typ=b"x", size=b"%011o\x00" % len(bad_pax)) + _pad(bad_pax) + _header(b"f") + END
        )
    with pytest.raises(FormatError):
        _entries(bytes(512) + _header(b"after-one-zero-block") + END)


# -- sparse files (written by GNU tar) ----------------------------------------------------------------


@pytest.mark.skipif(not HAVE_GNU_TAR, reason="GNU tar not installed")
@pytest.mark.parametrize(
    ("args", "typ", "fmt"),
    [
        (["--format=gnu"], b"S", "gnu"),
        (["--format=pax", "--sparse-version=0.0"], b"0", "pax"),
        (["--format=pax", "--sparse-version=0.1"], b"0", "pax"),
        (["--format=pax", "--sparse-version=1.0"], b"0", "pax"),
    ],
)
def test_sparse_files(tmp_path: Path, args: list[str], typ: bytes, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "holes"
    with open(sparse, "wb") as f:
        f.truncate(3 << 20)
        f.seek(100_000)
        f.write(b"first")
        f.seek(2_500_000)
        f.write(b"second" * 1000)
    (src / "after").write_bytes(b"next file")
    archive = tmp_path / "a.tar"
    subprocess.run(
        ["tar", *args, "--sparse", "-cf", str(archive), "-C", str(src), "holes", "after"], check=True
    )
    data = archive.read_bytes()
    entries, reader = _entries(data)
    (holes, content), (after, after_content) = entries
    assert holes.name == "holes" and holes.type == typ and holes.format == fmt
    assert holes.size == 3 << 20 and content == sparse.read_bytes()
    assert holes.sparse is not None and sum(n for _, n in holes.sparse) == holes.data_length
    assert holes.data_length < 3 << 20
    assert (after.name, after_content) == ("after", b"next file")
    _check_layout(data, entries, reader)
    # The stored fragments can also be taken raw.
    raw = TarReader(io.BytesIO(data))
    next(raw)
    assert raw.read_raw() == data[holes.data_offset : holes.data_offset + holes.data_length]


@pytest.mark.skipif(not HAVE_GNU_TAR, reason="GNU tar not installed")
@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar", "v7"])
def test_gnu_tar_formats(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"content" * 100)
    os.link(src / "d" / "f", src / "d" / "hard")
    os.symlink("f", src / "d" / "sym")
    if fmt != "v7":
        os.mkfifo(src / "fifo")
    if fmt != "v7":
        (src / ("n" * 60)).mkdir()
        (src / ("n" * 60) / ("m" * 60)).write_bytes(b"deep")
        (src / "\u00fcn\u00efc\u00f6d\u00e9").write_bytes(b"u")
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(archive), "-C", str(src), "."], check=True)
    data = archive.read_bytes()
    entries, reader = _entries(data)
    names = {e.name: (e, c) for e, c in entries}
    assert names["./"][0].is_dir if fmt != "v7" else names["./"][0].type == b"5"
    assert names["./d/f"][1] == b"content" * 100
    assert names["./d/hard"][0].is_hardlink or names["./d/f"][0].is_hardlink
    assert names["./d/sym"][0].linkname == "f"
    if fmt != "v7":
        assert names["./fifo"][0].is_fifo
        assert names["./" + "n" * 60 + "/" + "m" * 60][1] == b"deep"
        assert names["./\u00fcn\u00efc\u00f6d\u00e9"][1] == b"u"
    _check_layout(data, entries, reader)


# -- paths --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "clean"),
    [("./a/../b/", "b"), ("./", ""), ("/", ""), ("a//b/./c", "a/b/c"), ("/abs/x", "abs/x"), ("../x", "x")],
)
def test_clean_path(name: str, clean: str) -> None:
    assert clean_path(name) == clean


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/../etc/passwd", "..", "./.."])
def test_check_safe_rejects_escapes(name: str) -> None:
    with pytest.raises(FormatError) as err:
        check_safe(name)
    assert err.value.entry == name


@pytest.mark.parametrize("name", ["a/b", "./a/../b", "/etc/passwd", "a/..", "..a/b", "./"])
def test_check_safe_accepts(name: str) -> None:
    check_safe(name)


# -- interop: the same archives through Go's archive/tar ----------------------------------------------

_GO_DUMP = r"""
package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(b []byte) (int, error) { n, err := c.r.Read(b); c.n += int64(n); return n, err }

func main() {
	f, _ := os.Open(os.Args[1])
	c := &counter{r: f}
	tr := tar.NewReader(c)
	out := []map[string]any{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			out = append(out, map[string]any{"eof": c.n})
			break
		}
		if err != nil {
			out = append(out, map[string]any{"err": true})
			break
		}
		pax := map[string][]byte{}
		for k, v := range h.PAXRecords {
			pax[k] = []byte(v)
		}
		e := map[string]any{
			"name": []byte(h.Name), "type": int(h.Typeflag), "linkname": []byte(h.Linkname), "mode": h.Mode,
			"uid": h.Uid, "gid": h.Gid, "uname": []byte(h.Uname), "gname": []byte(h.Gname), "size": h.Size,
			"mtime": []int64{h.ModTime.Unix(), int64(h.ModTime.Nanosecond())}, "devmajor": h.Devmajor,
			"devminor": h.Devminor, "format": h.Format.String(), "pax": pax,
		}
		if h.Typeflag != tar.TypeXGlobalHeader {
			e["data_offset"] = c.n
		}
		sum := sha256.New()
		if _, err := io.CopyN(sum, tr, 1<<24); err != nil && err != io.EOF {
			e["read_err"] = true
		}
		e["sha"] = hex.EncodeToString(sum.Sum(nil))
		out = append(out, e)
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
"""


def _python_dump(path: Path) -> list[dict[str, object]]:
    import base64
    import hashlib

    def b64(s: str) -> str:
        return base64.b64encode(s.encode("utf-8", "surrogateescape")).decode()

    out: list[dict[str, object]] = []
    formats = {"ustar": "USTAR", "pax": "PAX", "gnu": "GNU"}
    with open(path, "rb") as f:
        reader = TarReader(f)
        try:
            for e in reader:
                d: dict[str, object] = {
                    "name": b64(e.name),
                    "type": e.type[0],
                    "linkname": b64(e.linkname),
                    "mode": e.mode,
                    "uid": e.uid,
                    "gid": e.gid,
                    "uname": b64(e.uname),
                    "gname": b64(e.gname),
                    "size": e.size,
                    "mtime": [e.mtime, e.mtime_nsec],
                    "devmajor": e.devmajor,
                    "devminor": e.devminor,
                    "format": formats.get(e.format, "<unknown>"),
                    "pax": {k: b64(v) for k, v in e.pax_records.items()},
                }
                if e.type != b"g":
                    d["data_offset"] = e.data_offset
                digest = hashlib.sha256()
                try:
                    digest.update(reader.read(1 << 24))
                except FormatError:
                    d["read_err"] = True
                d["sha"] = digest.hexdigest()
                out.append(d)
            out.append({"eof": reader.eof_offset})
        except FormatError:
            out.append({"err": True})
    return out


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("go") is None, reason="Go toolchain not installed")
def test_matches_go_archive_tar(tmp_path: Path) -> None:
    import json

    (tmp_path / "main.go").write_text(_GO_DUMP)
    (tmp_path / "go.mod").write_text("module dump\n\ngo 1.19\n")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run(["go", "build", "-o", "dump", "."], cwd=tmp_path, check=True, env=env)
    goroot = subprocess.run(
        ["go", "env", "GOROOT"], capture_output=True, text=True, check=True
    ).stdout.strip()
    archives = sorted((Path(goroot) / "src" / "archive" / "tar" / "testdata").glob("*.tar"))
    own = tmp_path / "own"
    own.mkdir()
    for fmt, name in (
        (tarfile.GNU_FORMAT, "gnu"),
        (tarfile.PAX_FORMAT, "pax"),
        (tarfile.USTAR_FORMAT, "ustar"),
    ):
        try:
            data = _tarfile_archive(fmt)
        except ValueError:  # USTAR cannot hold some of the names
            continue
        (own / f"{name}.tar").write_bytes(data)
        archives.append(own / f"{name}.tar")
    if shutil.which("tar"):
        src = tmp_path / "src"
        (src / "d").mkdir(parents=True)
        (src / "d" / "f").write_bytes(b"x" * 5000)
        with open(src / "sparse", "wb") as f:
            f.truncate(1 << 20)
            f.write(b"data")
        for args in (["--format=gnu"], ["--format=pax", "--sparse-version=1.0"], ["--format=pax"]):
            target = own / f"gnutar{len(archives)}.tar"
            subprocess.run(["tar", *args, "--sparse", "-cf", str(target), "-C", str(src), "."], check=True)
            archives.append(target)
    assert len(archives) > 10
    for archive in archives:
        go = json.loads(
            subprocess.run([str(tmp_path / "dump"), str(archive)], capture_output=True, check=True).stdout
        )
        for entry in go:
            for key in ("name", "linkname", "uname", "gname"):
                if key in entry:
                    entry[key] = entry[key] or ""
            if "pax" in entry:
                entry["pax"] = {k: v or "" for k, v in entry["pax"].items()}
        assert _python_dump(archive) == go, archive.name
