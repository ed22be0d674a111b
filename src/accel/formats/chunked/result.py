"""What building a chunked layer produces, whatever its format."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class BuildResult:
    """What the driver needs to describe the new layer: ``media_type`` and ``annotations`` go on its
    descriptor, ``diff_id`` into the config's ``rootfs.diff_ids``. ``toc_digest`` is the digest the
    format's TOC is checked against (eStargz: the TOC JSON; containers/storage zstd:chunked: the compressed
    manifest)."""

    toc_digest: str
    diff_id: str
    uncompressed_size: int
    compressed_size: int
    digest: str
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)
    missed_prioritized: list[str] = field(default_factory=list)
    entries: int = 0
