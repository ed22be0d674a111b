"""Paths of the SOCI fixtures copied into tests/data/soci (always present) and of the shared originals."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parents[3] / "data" / "soci"
SHARED = Path(__file__).parents[4] / ".." / "shared" / "fixtures" / "soci"
SPAN = 262144
TOOL = "AWS SOCI CLI v0.2"

# (zTOC fixture name, layer file, compression)
ZTOC_FIXTURES = [
    ("layer-pax", "layer-pax.tar.gz", "gzip"),
    ("layer-pax-multimember", "layer-pax-multimember.tar.gz", "gzip"),
    ("layer-gnu", "layer-gnu.tar.gz", "gzip"),
    ("layer-pax-uncompressed", "layer-pax.tar.gz", "uncompressed"),
]
