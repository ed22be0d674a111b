from __future__ import annotations

from pathlib import Path

import pytest

from accel.errors import InvalidReferenceError
from accel.oci.reference import LayoutReference, Reference, parse_image_ref

D = "sha256:" + "ab" * 32

VALID = [
    ("busybox", ("docker.io", "library/busybox", "latest", None)),
    ("busybox:1.36", ("docker.io", "library/busybox", "1.36", None)),
    ("library/busybox", ("docker.io", "library/busybox", "latest", None)),
    ("docker.io/busybox", ("docker.io", "library/busybox", "latest", None)),
    ("index.docker.io/foo/bar:t", ("docker.io", "foo/bar", "t", None)),
    ("registry-1.docker.io/nginx", ("docker.io", "library/nginx", "latest", None)),
    ("user/repo", ("docker.io", "user/repo", "latest", None)),
    ("localhost/foo", ("localhost", "foo", "latest", None)),
    ("localhost:5000/foo/bar:v1", ("localhost:5000", "foo/bar", "v1", None)),
    ("myregistry.com/a/b/c:tag", ("myregistry.com", "a/b/c", "tag", None)),
    (f"127.0.0.1:5000/repo@{D}", ("127.0.0.1:5000", "repo", None, D)),
    (f"harbor.example.com/proj/img:v1@{D}", ("harbor.example.com", "proj/img", "v1", D)),
    ("[::1]:5000/foo:bar", ("[::1]:5000", "foo", "bar", None)),
    ("a.b/x__y.z-w:T_1.2-3", ("a.b", "x__y.z-w", "T_1.2-3", None)),
    ("docker://quay.io/foo/bar:1", ("quay.io", "foo/bar", "1", None)),
    ("Registry/foo", ("Registry", "foo", "latest", None)),  # uppercase first component: a host, like Docker
    ("foo/bar---baz", ("docker.io", "foo/bar---baz", "latest", None)),
    ("foo:" + "t" * 128, ("docker.io", "library/foo", "t" * 128, None)),
]

INVALID = [
    "",
    "   ",
    "docker.io/Upper",
    "foo:bad tag",
    "foo:-tag",
    "foo:",
    "foo@sha256:abc",
    "foo@md5:" + "a" * 32,
    "foo@",
    "foo//bar",
    "foo/bar/",
    "-foo",
    "foo_/bar",
    "foo:bar:baz",
    "foo:" + "t" * 129,
    "example.com/" + "a" * 250,
    f"foo@{D}@{D}",
    "host_name.com/foo",
    "/foo",
    "a" * 64,
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_parse_valid(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = Reference.parse(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == expected
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        Reference.parse(text)


def test_canonical_string() -> None:
    assert str(Reference.parse("busybox")) == "docker.io/library/busybox:latest"
    assert str(Reference.parse(f"r.io/a@{D}")) == f"r.io/a@{D}"
    assert str(Reference.parse(f"r.io/a:t@{D}")) == f"r.io/a:t@{D}"


def test_reference_helpers() -> None:
    ref = Reference.parse("r.io:5000/team/app:v1")
    assert ref.name == "r.io:5000/team/app"
    assert ref.reference == "v1"
    pinned = ref.with_digest(D)
    assert pinned.reference == D
    assert pinned.tag == "v1"
    assert str(pinned.with_tag("v2")) == "r.io:5000/team/app:v2"
    assert pinned.with_tag("v2").digest is None
    repo = ref.repo_ref()
    assert (repo.tag, repo.digest, str(repo)) == (None, None, "r.io:5000/team/app")
    with pytest.raises(InvalidReferenceError):
        _ = repo.reference
    with pytest.raises(InvalidReferenceError):
        ref.with_tag("bad tag")
    with pytest.raises(InvalidReferenceError):
        ref.with_digest("sha256:short")


def test_constructor_validates() -> None:
    with pytest.raises(InvalidReferenceError):
        Reference("bad host!", "repo", "t")
    with pytest.raises(InvalidReferenceError):
        Reference("r.io", "Repo", "t")


def test_layout_reference() -> None:
    assert LayoutReference.parse("oci:/tmp/img:v1") == LayoutReference(Path("/tmp/img"), "v1")
    assert LayoutReference.parse("oci:rel/dir") == LayoutReference(Path("rel/dir"), None)
    assert LayoutReference.parse("oci:/tmp/img:") == LayoutReference(Path("/tmp/img"), None)
    assert LayoutReference.parse("oci:/x:a:b").tag == "a:b"  # the path ends at the first ':', as in skopeo
    assert str(LayoutReference(Path("/tmp/img"), "v1")) == "oci:/tmp/img:v1"
    for bad in ("oci:", "oci::tag", "oci:/x:bad tag", "docker://x"):
        with pytest.raises(InvalidReferenceError):
            LayoutReference.parse(bad)


def test_parse_image_ref_dispatch() -> None:
    assert isinstance(parse_image_ref("oci:/tmp/x:t"), LayoutReference)
    assert parse_image_ref("busybox") == Reference("docker.io", "library/busybox", "latest")
