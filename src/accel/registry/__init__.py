"""OCI distribution client: auth (Basic, Bearer tokens), one retry policy, digest checks, referrers."""

from accel.registry.auth import Challenge, Credentials, TokenCache, parse_www_authenticate
from accel.registry.client import (
    BlobUpload,
    FetchedDescriptor,
    FetchedManifest,
    PutManifestResult,
    RegistryClient,
)
from accel.registry.referrers import fallback_tag
from accel.registry.retry import RetryableError, RetryPolicy, parse_retry_after

__all__ = [
    "BlobUpload",
    "Challenge",
    "Credentials",
    "FetchedDescriptor",
    "FetchedManifest",
    "PutManifestResult",
    "RegistryClient",
    "RetryPolicy",
    "RetryableError",
    "TokenCache",
    "fallback_tag",
    "parse_retry_after",
    "parse_www_authenticate",
]
