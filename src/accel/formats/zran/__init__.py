"""Random access into gzip streams, shared by the formats that index gzip layers in place (SOCI zTOCs,
Nydus OCI-ref blobs): one streaming inflater that stops at deflate block boundaries for checkpoints, and
inflating from a checkpoint. Format-neutral: each format decides where it keeps checkpoints and how it
stores them.
"""

from accel.formats.zran.inflater import WINDOW_SIZE, BlockInflater
from accel.formats.zran.native import library_name
from accel.formats.zran.restart import inflate_from

__all__ = ["WINDOW_SIZE", "BlockInflater", "inflate_from", "library_name"]
