"""Upstream's four sample configs (goharbor/acceleration-service ``misc/config``, kept in
``tests/data/upstream-config``) convert a real image on the real registry unchanged but for where to find
that registry and where to work: driver, options and tag rules are theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from accel.config import parse_config
from accel.converter import Converter
from tests.support.images import build_rich_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).parents[1] / "data" / "upstream-config"


def _sample(name: str, work: Path, registry: RegistryServer) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    data["provider"]["work_dir"] = str(work)
    data["provider"]["source"] = {registry.host: registry.source().model_dump(exclude_defaults=True)}
    return data


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("config.nydus.yaml", "-nydus"),
        ("config.nydus.ref.yaml", "-nydus-oci-ref"),
        ("config.estargz.yaml", "-esgz"),
        ("config.estargz.zstdchunked.yaml", "-estargz-zstdchunked"),
    ],
)
def test_upstream_sample_config_converts(
    name: str, suffix: str, registry_plain: RegistryServer, tmp_path: Path
) -> None:
    image = build_rich_image(tmp_path / "src")
    repo = "upstream/" + name.removeprefix("config.").removesuffix(".yaml").replace(".", "-")
    source = f"{registry_plain.host}/{repo}:v1"
    push_layout(image.layout, source, tls_verify=False)
    data = _sample(name, tmp_path / "work", registry_plain)
    rules = data["converter"]["rules"]
    assert {"tag_suffix": suffix} in rules, "the sample's own tag rule"
    with Converter(parse_config(data)) as converter:
        result = converter.convert(source)
        assert result.target.endswith(f"{repo}:v1{suffix}")
        report = converter.check(result.target)
    assert report.ok, [f for image_report in report.images for f in image_report.findings if not f.ok]
    details = " ".join(f.detail for image_report in report.images for f in image_report.findings)
    assert "paths equal" in details, "the converted tree equals the source's"
