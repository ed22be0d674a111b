"""JSON-ready descriptions of decoded bootstraps and blobs (the shape of the fixtures' expected-*.json)."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from accel.errors import FormatError
from accel.formats.filetree import FileRecord
from accel.formats.nydus import constants as c
from accel.formats.nydus.blob import BlobFile
from accel.formats.nydus.reader import Bootstrap, chunk_ranges, file_type_name


def bootstrap_layout(bs: Bootstrap) -> dict[str, Any]:
    """Superblocks, device slots, blob table, chunk table and every inode (one per path)."""
    sb, ext = bs.superblock, bs.ext
    out: dict[str, Any] = {
        "file_size": len(bs.data),
        "sha256": hashlib.sha256(bs.data).hexdigest(),
        "superblock": {
            "magic": sb.magic,
            "checksum": sb.checksum,
            "feature_compat": sb.feature_compat,
            "blkszbits": sb.blkszbits,
            "extslots": sb.extslots,
            "root_nid": sb.root_nid,
            "inos": sb.inos,
            "build_time": sb.build_time,
            "build_time_nsec": sb.build_time_nsec,
            "blocks": sb.blocks,
            "meta_blkaddr": sb.meta_blkaddr,
            "xattr_blkaddr": sb.xattr_blkaddr,
            "feature_incompat": sb.feature_incompat,
            "s_u": sb.s_u,
            "extra_devices": sb.extra_devices,
            "devt_slotoff": sb.devt_slotoff,
            "uuid": sb.uuid.hex(),
        },
        "ext_superblock": {
            "flags": ext.flags,
            "blob_table_offset": ext.blob_table_offset,
            "blob_table_size": ext.blob_table_size,
            "chunk_size": ext.chunk_size,
            "chunk_table_offset": ext.chunk_table_offset,
            "chunk_table_size": ext.chunk_table_size,
            "prefetch_table_offset": ext.prefetch_table_offset,
            "prefetch_table_size": ext.prefetch_table_size,
            "flag_names": c.flag_names(ext.flags, c.SUPER_FLAGS),
        },
        "devices": [
            {"blob_id": d.blob_id, "blocks": d.blocks, "mapped_blkaddr": d.mapped_blkaddr} for d in bs.devices
        ],
        "blob_table": [
            {
                "blob_id": b.blob_id,
                "blob_index": b.blob_index,
                "chunk_size": b.chunk_size,
                "chunk_count": b.chunk_count,
                "compressor": c.COMPRESSORS.get(b.compression_algo, "unknown"),
                "digester": c.DIGESTERS.get(b.digest_algo, "unknown"),
                "features": b.features,
                "feature_names": c.flag_names(b.features, c.BLOB_FEATURES),
                "compressed_size": b.compressed_size,
                "uncompressed_size": b.uncompressed_size,
                "blob_toc_size": b.blob_toc_size,
                "ci_compressor": c.COMPRESSORS.get(b.ci_compressor, "unknown"),
                "ci_offset": b.ci_offset,
                "ci_compressed_size": b.ci_compressed_size,
                "ci_uncompressed_size": b.ci_uncompressed_size,
                "blob_toc_digest": b.blob_toc_digest.hex(),
                "blob_meta_digest": b.blob_meta_digest.hex(),
                "blob_meta_size": b.blob_meta_size,
                "cipher_iv": b.cipher_iv.hex(),
                "cipher_algo": b.cipher_algo,
            }
            for b in bs.blobs
        ],
        "chunk_table": [
            {
                "digest": ch.digest.hex(),
                "blob_index": ch.blob_index,
                "flags": ch.flags,
                "compressed_size": ch.compressed_size,
                "uncompressed_size": ch.uncompressed_size,
                "compressed_offset": ch.compressed_offset,
                "uncompressed_offset": ch.uncompressed_offset,
                "file_offset": ch.file_offset,
                "index": ch.index,
                "crc32": ch.crc32,
            }
            for ch in bs.chunk_table
        ],
        "inodes": [],
    }
    for path, nid in bs.entries:
        rec = bs.inodes[nid]
        ino = rec.inode
        item: dict[str, Any] = {
            "path": path.decode("utf-8", "surrogateescape"),
            "nid": nid,
            "byte_offset": rec.offset,
            "format": "compact" if ino.compact else "extended",
            "datalayout": c.LAYOUT_NAMES.get(ino.datalayout, str(ino.datalayout)),
            "i_u": ino.i_u,
            "i_ino": ino.ino,
            "i_size": ino.size,
            "i_nlink": ino.nlink,
            "xattr_icount": ino.xattr_icount,
        }
        if stat.S_ISREG(ino.mode):
            item["chunk_bits"] = rec.chunk_bits
            item["chunk_indexes"] = [
                {
                    "device_id": a.device_id,
                    "blob_index": a.blob_index,
                    "ci_index": a.ci_index,
                    "blkaddr": a.blkaddr,
                }
                for a in rec.chunks
            ]
        out["inodes"].append(item)
    return out


def blob_layout(blob: BlobFile) -> dict[str, Any]:
    """Tar trailer, ToC and blob.meta header of a blob."""
    out: dict[str, Any] = {
        "file_size": len(blob.data),
        "sha256": hashlib.sha256(blob.data).hexdigest(),
        "tar_trailer": [
            {"name": s.name, "data_offset": s.data_offset, "size": s.size, "header_offset": s.header_offset}
            for s in blob.sections
        ],
        "toc": [
            {
                "name": e.name,
                "flags": e.flags,
                "compressor": e.compressor,
                "uncompressed_digest": e.uncompressed_digest.hex(),
                "compressed_offset": e.compressed_offset,
                "compressed_size": e.compressed_size,
                "uncompressed_size": e.uncompressed_size,
            }
            for e in blob.toc
        ],
        "toc_digest_sha256_of_toc_plus_header": blob.toc_digest.hex(),
    }
    h = blob.meta_header
    if h is not None:
        out["blob_meta_header"] = {
            "magic": f"{h.magic:#x}",
            "magic2": f"{h.magic2:#x}",
            "features": h.features,
            "feature_names": c.flag_names(h.features, c.BLOB_FEATURES),
            "ci_compressor": c.COMPRESSORS.get(h.ci_compressor, "unknown"),
            "ci_entries": h.ci_entries,
            "ci_offset": h.ci_offset,
            "ci_compressed_size": h.ci_compressed_size,
            "ci_uncompressed_size": h.ci_uncompressed_size,
            "zran_offset": h.zran_offset,
            "zran_size": h.zran_size,
            "zran_count": h.zran_count,
        }
    return out


def file_tree(bs: Bootstrap, devices: Sequence[bytes] | None = None) -> list[dict[str, Any]]:
    """The file tree as the kernel shows it; ``devices`` (uncompressed blob images) adds content sha256."""
    shared: dict[int, list[bytes]] = {}
    for path, nid in bs.entries:
        shared.setdefault(nid, []).append(path)
    out = []
    for path, nid in bs.entries:
        rec = bs.inodes[nid]
        ino = rec.inode
        kind = file_type_name(ino.mode)
        item: dict[str, Any] = {
            "path": path.decode("utf-8", "surrogateescape"),
            "type": kind,
            "mode": f"{stat.S_IMODE(ino.mode):04o}",
            "uid": ino.uid,
            "gid": ino.gid,
        }
        if kind == "reg":
            item["size"] = ino.size
            item["nlink"] = ino.nlink
            if devices is not None:
                item["sha256"] = file_sha256(bs, rec.nid, devices)
            group = shared[nid]
            if len(group) > 1:
                item["hardlink_group"] = group[0].decode("utf-8", "surrogateescape")
        if kind == "symlink":
            item["target"] = (rec.symlink or b"").decode("utf-8", "surrogateescape")
        else:
            item["mtime"] = ino.mtime
            item["mtime_nsec"] = ino.mtime_nsec
        if kind in ("chr", "blk"):
            item["rdev"] = ino.i_u
        out.append(item)
    return out


def file_sha256(bs: Bootstrap, nid: int, devices: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for blob_index, offset, length in chunk_ranges(bs, bs.inodes[nid]):
        h.update(devices[blob_index][offset : offset + length])
    return h.hexdigest()


def file_records(bs: Bootstrap, blobs: Sequence[BlobFile]) -> dict[str, FileRecord]:
    """The bootstrap's tree as :class:`FileRecord` per path, contents hashed from ``blobs`` (in the order
    of the bootstrap's blob table), for comparison with the tree of the image's source layers."""
    at_offset = [{ci.uncompressed_offset: i for i, ci in enumerate(blob.chunks)} for blob in blobs]
    compressors = [c.COMPRESSORS[entry.compression_algo] for entry in bs.blobs]
    out: dict[str, FileRecord] = {}
    for path, nid in bs.entries:
        rec = bs.inodes[nid]
        ino = rec.inode
        name = path.decode("utf-8", "surrogateescape")
        kind = file_type_name(ino.mode)
        record = FileRecord(
            kind,
            stat.S_IMODE(ino.mode),
            ino.uid,
            ino.gid,
            xattrs=tuple(sorted((k.decode("utf-8", "surrogateescape"), v) for k, v in rec.xattrs)),
        )
        if kind == "reg":
            digest = hashlib.sha256()
            for blob_index, offset, length in chunk_ranges(bs, rec):
                index = at_offset[blob_index].get(offset)
                if index is None:
                    raise FormatError(f"no chunk of blob {blob_index} starts at {offset}", entry=name)
                digest.update(blobs[blob_index].chunk_data(index, compressors[blob_index])[:length])
            record = replace(record, size=ino.size, sha256=digest.hexdigest())
        elif kind == "symlink":
            record = replace(record, target=(rec.symlink or b"").decode("utf-8", "surrogateescape"))
        elif kind in ("chr", "blk"):
            dev = ino.i_u
            record = replace(record, rdev=((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)))
        out[name] = record
    return out
