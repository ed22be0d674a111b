"""Target references from ``converter.rules``, with upstream's tag mapping (``pkg/adapter/rule.go``).

``repo:tag`` becomes ``repo:tag<suffix>``; a reference without a tag, or one given only by digest,
becomes ``repo:latest<suffix>``; ``repo:tag@digest`` keeps its tag. An empty suffix converts in place
(the tag moves to the converted image), which users asked upstream for; loops are still avoided because
converted images are recognised by their annotations, not by their tag.
"""

from __future__ import annotations

from accel.oci.reference import LayoutReference, Reference


def target_tag(tag: str | None, suffix: str) -> str:
    return f"{tag or 'latest'}{suffix}"


def target_reference(source: Reference | LayoutReference, suffix: str) -> Reference | LayoutReference:
    if isinstance(source, LayoutReference):
        return LayoutReference(source.path, target_tag(source.tag, suffix))
    return Reference(source.host, source.repository, target_tag(source.tag, suffix), None)
