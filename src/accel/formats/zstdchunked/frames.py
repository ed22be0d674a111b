"""zstd skippable frames and the two zstd:chunked footers."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from accel.errors import FormatError

SKIPPABLE_MAGIC: Final = b"\x50\x2a\x4d\x18"
SKIPPABLE_HEADER_SIZE: Final = 8
STARGZ_MAGIC: Final = b"GnUlInUx"
STORAGE_MAGIC: Final = b"GNUlInUx"
STARGZ_FOOTER_SIZE: Final = 40
STORAGE_FOOTER_SIZE: Final = 64
MANIFEST_TYPE_CRFS: Final = 1


def skippable_frame(data: bytes) -> bytes:
    if len(data) >= 1 << 32:
        raise FormatError("skippable frame larger than 4 GiB")
    return SKIPPABLE_MAGIC + struct.pack("<I", len(data)) + data


def stargz_footer(toc_offset: int, compressed_len: int, uncompressed_len: int) -> bytes:
    """stargz-snapshotter's 40-byte footer (``GnUlInUx``), without its skippable frame header."""
    return (
        struct.pack("<QQQQ", toc_offset, compressed_len, uncompressed_len, MANIFEST_TYPE_CRFS) + STARGZ_MAGIC
    )


@dataclass(frozen=True, slots=True)
class StorageFooter:
    """containers/storage's 64-byte footer: where the manifest and the tar-split are."""

    manifest_offset: int
    manifest_compressed: int
    manifest_uncompressed: int
    tarsplit_offset: int
    tarsplit_compressed: int
    tarsplit_uncompressed: int
    manifest_type: int = MANIFEST_TYPE_CRFS

    def encode(self) -> bytes:
        return (
            struct.pack(
                "<QQQQQQQ",
                self.manifest_offset,
                self.manifest_compressed,
                self.manifest_uncompressed,
                self.manifest_type,
                self.tarsplit_offset,
                self.tarsplit_compressed,
                self.tarsplit_uncompressed,
            )
            + STORAGE_MAGIC
        )

    @classmethod
    def parse(cls, data: bytes) -> StorageFooter:
        if len(data) != STORAGE_FOOTER_SIZE or data[56:] != STORAGE_MAGIC:
            raise FormatError("not a zstd:chunked (containers/storage) footer")
        moff, mclen, mulen, mtype, toff, tclen, tulen = struct.unpack("<QQQQQQQ", data[:56])
        if mtype != MANIFEST_TYPE_CRFS:
            raise FormatError(f"zstd:chunked footer: unknown manifest type {mtype}")
        return cls(moff, mclen, mulen, toff, tclen, tulen, mtype)
