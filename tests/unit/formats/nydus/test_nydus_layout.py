"""The v6 layout allocator (the cases of nydus's ``test_set_v6_offset``) and small encoders."""

from __future__ import annotations

from accel.formats.nydus import constants as c
from accel.formats.nydus.ondisk import Dirent, decode_dirent_block, dirent_blocks, dirent_size, tar_header
from accel.formats.nydus.writer import Layout, makedev


def test_set_v6_offset_cases() -> None:
    ctx = Layout(offset=0)
    assert ctx.place_regular(32, 0) == 0  # a compact inode without chunks
    assert ctx.offset == 32

    assert ctx.place_with_tail(32, 4064) == (4096, 8192, c.LAYOUT_FLAT_INLINE)
    assert ctx.offset == 8192

    off, dirents, layout = ctx.place_with_tail(32, 4096)
    assert (off, dirents, layout) == (32, 8192, c.LAYOUT_FLAT_PLAIN)
    assert ctx.offset == 8192 + 4096

    off, dirents, layout = ctx.place_with_tail(32, 8160)
    assert (off, dirents, layout) == (8192 + 4096, 8192 + 4096 + 4096, c.LAYOUT_FLAT_INLINE)
    assert ctx.offset == 8192 + 4096 + 8192

    off, dirents, layout = ctx.place_with_tail(32, 8161)
    assert (off, dirents, layout) == (64, 8192 + 4096 + 8192, c.LAYOUT_FLAT_PLAIN)
    assert ctx.offset == 8192 + 4096 + 8192 + 8192

    off, dirents, layout = ctx.place_with_tail(32, 4096 + 3968)
    assert (off, dirents, layout) == (96, 8192 + 4096 + 8192 + 8192, c.LAYOUT_FLAT_INLINE)
    assert ctx.offset == 8192 + 4096 + 8192 + 8192 + 4096

    off, dirents, layout = ctx.place_with_tail(32, 4096 + 2048)
    assert off == 8192 + 4096 + 8192 + 8192 + 4096
    assert dirents == 8192 + 4096 + 8192 + 8192 + 4096 + 4096
    assert ctx.offset == 8192 + 4096 + 8192 + 8192 + 4096 + 8192

    off, _, layout = ctx.place_with_tail(32, 1985)
    assert (off, layout) == (8192 + 4096 + 8192 + 8192 + 4096 + 8192, c.LAYOUT_FLAT_INLINE)
    assert ctx.offset == 8192 + 4096 + 8192 + 8192 + 4096 + 8192 + 32 + 1985 + 31

    ctx.align(32)
    off, _, layout = ctx.place_with_tail(32, 1984)
    assert (off, layout) == (8192 + 4096 + 8192 + 8192 + 4096 + 2048 + 32, c.LAYOUT_FLAT_INLINE)
    assert ctx.offset == 8192 + 4096 + 8192 + 8192 + 4096 + 8192 + 2048


def test_worked_example_offsets() -> None:
    """Spec 1.9: root at 4096 (nid 128) with 67 bytes of dirents, then two one-chunk files."""
    ctx = Layout()
    assert ctx.place_with_tail(64, 67)[0] == 4096
    assert ctx.place_regular(64, 1) == 4256
    assert ctx.place_regular(64, 1) == 4352


def test_dirent_blocks_never_straddle() -> None:
    names = sorted([b".", b".."] + [b"n%04d-%s" % (i, b"y" * 30) for i in range(200)])
    ents = [Dirent(128 + i, c.FT_REG, n) for i, n in enumerate(names)]
    blocks = dirent_blocks(ents)
    assert len(blocks) > 1
    assert all(len(b) <= 4096 for b in blocks)
    assert dirent_size(names) == 4096 * (len(blocks) - 1) + len(blocks[-1])
    decoded = [d for b in blocks for d in decode_dirent_block(b.ljust(4096, b"\0"), "dir")]
    assert decoded == ents


def test_makedev_matches_glibc() -> None:
    assert makedev(1, 3) == 0x103
    assert makedev(8, 1) == 0x801
    assert makedev(259, 0x12345) == (0x45 | 259 << 8 | 0x12300 << 12) & 0xFFFFFFFF


def test_tar_header_is_gnu_with_7_digit_checksum() -> None:
    hdr = tar_header("image.blob", 7802)
    assert len(hdr) == 512
    assert hdr[257:265] == b"ustar  \0"
    assert hdr[100:124] == bytes(24)  # mode, uid, gid all NUL
    assert hdr[124:136] == b"%011o\0" % 7802
    assert hdr[155] == 0 and hdr[148:154].isdigit()
    assert int(hdr[148:155], 8) == sum(hdr[:148]) + 256 + sum(hdr[156:])
