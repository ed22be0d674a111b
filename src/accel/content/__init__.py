"""The local content store under ``provider.work_dir``: blobs by digest, leases, fetch locks and GC."""

from accel.content.growing import GrowingFile
from accel.content.store import BlobWriter, ContentStore, GCResult, Lease

__all__ = ["BlobWriter", "ContentStore", "GCResult", "GrowingFile", "Lease"]
