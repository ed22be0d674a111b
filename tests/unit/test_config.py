"""Config loading: upstream's keys, our additions, and errors that name the key."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from accel.config import load_config, parse_config, parse_size
from accel.drivers import create_driver
from accel.errors import ConfigError

EXAMPLES = sorted((Path(__file__).parents[2] / "misc" / "config").glob("*.yaml"))

UPSTREAM_NYDUS = """
server:
  name: API
  host: 0.0.0.0
  port: "2077"
metric:
  enabled: true
provider:
  source:
    hub.harbor.com:
      auth: YWRtaW46SGFyYm9yMTIzNDU=
      insecure: true
      webhook:
        auth_header: header
  work_dir: /tmp
  gcpolicy:
    threshold: 1000MB
  cache_size: 200
  cache_version: v1
converter:
  worker: 5
  harbor_annotation: true
  platforms: linux/amd64,linux/arm64
  driver:
    type: nydus
    config:
      work_dir: /tmp
      with_referrer: true
      fs_version: 6
  rules:
    - tag_suffix: -nydus
    - cache_tag: nydus-cache
"""


def test_every_example_config_loads_and_makes_its_driver() -> None:
    assert len(EXAMPLES) >= 4, "misc/config has example configs"
    for path in EXAMPLES:
        config = load_config(path)
        driver = create_driver(config.converter.driver)
        assert driver.name in path.name or path.name == "config.yaml"


UPSTREAM_SAMPLES = Path(__file__).parents[1] / "data" / "upstream-config"


@pytest.mark.parametrize(
    "name", ["config.nydus.yaml", "config.estargz.yaml", "config.estargz.zstdchunked.yaml"]
)
def test_upstream_sample_configs_load_unchanged(name: str) -> None:
    config = load_config(UPSTREAM_SAMPLES / name)
    # Their `localhost:` host has every key commented out (YAML null): an all-defaults source, as in Go.
    assert config.provider.source["localhost"].auth == ""
    assert config.provider.source["hub.harbor.com"].webhook.auth_header == "header"
    driver = create_driver(config.converter.driver)
    assert driver.name == ("zstdchunked" if "zstdchunked" in name else name.split(".")[1])


def test_upstream_zran_sample_loads_as_an_oci_ref_nydus_driver() -> None:
    config = load_config(UPSTREAM_SAMPLES / "config.nydus.ref.yaml")
    driver = create_driver(config.converter.driver)
    assert driver.name == "nydus"
    assert driver.output_options()["oci_ref"] is True
    assert driver.output_options()["with_referrer"] is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("encrypt_recipients", "jwe:key.pem"),
        ("backend_type", "oss"),
    ],
)
def test_nydus_options_not_built_yet_are_refused_and_their_off_values_accepted(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: not supported"):
        create_driver(
            parse_config(
                {"converter": {"driver": {"type": "nydus", "config": {key: value}}}}
            ).converter.driver
        )
    off = ""
    create_driver(
        parse_config({"converter": {"driver": {"type": "nydus", "config": {key: off}}}}).converter.driver
    )


def test_the_kubernetes_example_carries_a_valid_config() -> None:
    manifests = Path(__file__).parents[2] / "misc" / "deploy" / "kubernetes" / "acceld.yaml"
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(manifests.read_text())}
    assert set(documents) == {"Secret", "Deployment", "Service"}
    config = parse_config(yaml.safe_load(documents["Secret"]["stringData"]["config.yaml"]))
    assert config.provider.database.startswith("postgresql://")
    create_driver(config.converter.driver)
    [volume] = [v for v in documents["Deployment"]["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == documents["Secret"]["metadata"]["name"]


def test_database_must_be_empty_or_postgres() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"provider": {"database": "mysql://u:pw@h/x"}, "converter": {"driver": {"type": "oci"}}})
    assert "provider.database" in raised.value.message and "pw" not in raised.value.message


def test_upstream_config_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(UPSTREAM_NYDUS)
    config = load_config(path)
    assert config.server.port == 2077
    assert config.provider.gcpolicy.threshold == 1000 * 1000 * 1000
    source = config.source("hub.harbor.com")
    assert source is not None and source.insecure
    assert source.credentials("hub.harbor.com") == ("admin", "Harbor12345")
    assert config.converter.driver.config == {"work_dir": "/tmp", "with_referrer": "true", "fs_version": "6"}
    assert config.converter.platform_list == ["linux/amd64", "linux/arm64"]
    assert config.converter.tag_suffix == "-nydus"
    assert config.converter.cache_tag == "nydus-cache"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"provider": {"wrok_dir": "/x"}}, "provider.wrok_dir: unknown key"),
        ({"provider": {"gcpolicy": {"threshold": "lots"}}}, "provider.gcpolicy.threshold: invalid size"),
        ({"provider": {"source": {"h": {"auth": "not base64!"}}}}, "provider.source.h.auth: invalid base64"),
        ({"provider": {"source": {"h": {"auth": base64.b64encode(b"nocolon").decode()}}}}, "has no ':'"),
        ({"converter": {}}, "converter.driver: required key is missing"),
        ({"converter": {"driver": {"type": "oci"}, "worker": 0}}, "converter.worker"),
    ],
)
def test_bad_config_names_the_key(patch: dict[str, object], message: str) -> None:
    data: dict[str, object] = {"converter": {"driver": {"type": "oci"}}}
    data.update(patch)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


def test_secrets_stay_out_of_repr() -> None:
    config = parse_config(
        {
            "server": {"api_token": "tok-secret"},
            "provider": {"source": {"h": {"auth": base64.b64encode(b"u:pw-secret").decode()}}},
            "converter": {"driver": {"type": "oci"}},
        }
    )
    assert "pw-secret" not in repr(config) and "tok-secret" not in repr(config)
    assert base64.b64encode(b"u:pw-secret").decode() not in repr(config)


def test_docker_config_fallback(tmp_path: Path) -> None:
    docker = tmp_path / "config.json"
    docker.write_text(
        json.dumps(
            {
                "auths": {
                    "https://reg.example.com": {"auth": base64.b64encode(b"alice:s3cret").decode()},
                    "other.example.com": {"username": "bob", "password": "pw"},
                }
            }
        )
    )
    config = parse_config(
        {
            "provider": {"source": {"reg.example.com": {}, "other.example.com": {}, "none.example.com": {}}},
            "converter": {"driver": {"type": "oci"}},
        }
    )
    sources = config.provider.source
    assert sources["reg.example.com"].credentials("reg.example.com", docker) == ("alice", "s3cret")
    assert sources["other.example.com"].credentials("other.example.com", docker) == ("bob", "pw")
    assert sources["none.example.com"].credentials("none.example.com", docker) is None


def test_relative_work_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("provider: {work_dir: ./w}\nconverter: {driver: {type: oci}}\n")
    assert load_config(path).provider.work_dir == tmp_path / "sub" / "w"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("converter: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1000MB", 10**9), ("1GiB", 1 << 30), ("10 kb", 10_000), ("512", 512), (42, 42), ("1.5KiB", 1536)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size
