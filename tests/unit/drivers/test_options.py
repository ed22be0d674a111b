"""Driver options: upstream's string values, clear errors naming the key, and output keys."""

from __future__ import annotations

import pytest

from accel.config import DriverConfig
from accel.drivers import available_drivers, create_driver
from accel.drivers.zstdchunked import ZstdChunkedDriver
from accel.errors import ConfigError


def driver_key(kind: str, **options: str) -> str:
    return create_driver(DriverConfig(type=kind, config=options)).key()


def test_every_driver_is_registered() -> None:
    assert {"oci", "estargz", "zstdchunked", "nydus"} <= set(available_drivers())


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("estargz", {"chunk_sise": "1"}, "unknown option(s) for driver 'estargz': chunk_sise"),
        (
            "estargz",
            {"compressor": "gzip"},
            "converter.driver.config.compressor: expected one of libdeflate, zlib-ng, isal",
        ),
        ("estargz", {"chunk_size": "big"}, "converter.driver.config.chunk_size: expected an integer"),
        ("zstdchunked", {"flavour": "podman"}, "converter.driver.config.flavour"),
        ("zstdchunked", {"prioritized_files": "/bin/sh"}, "only the stargz flavour"),
        ("zstdchunked", {"chunk_size": "100000"}, "needs a power of two up to 1 MiB"),
        ("nydus", {"fs_version": "4"}, "converter.driver.config.fs_version: RAFS v5 and v6 are built"),
        (
            "nydus",
            {"fs_align_chunk": "maybe"},
            "converter.driver.config.fs_align_chunk: expected true or false",
        ),
        ("nydus", {"compressor": "gzip"}, "converter.driver.config.compressor"),
        ("nydus", {"oci_ref": "true", "fs_version": "5"}, "OCI-ref images are RAFS v6 only"),
        ("nydus", {"oci_ref": "sometimes"}, "converter.driver.config.oci_ref: expected true or false"),
        ("nydus", {"fs_chunk_size": "0x3000"}, "power of two"),
        (
            "nydus",
            {"with_referrer": "maybe"},
            "converter.driver.config.with_referrer: expected true or false",
        ),
        ("oci", {"anything": "1"}, "unknown option(s) for driver 'oci'"),
        ("overlaybd", {}, "converter.driver.type: unsupported driver 'overlaybd'"),
    ],
)
def test_bad_options_name_the_key(kind: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        create_driver(DriverConfig(type=kind, config=options))
    assert message in str(err.value)


def test_upstream_estargz_zstdchunked_is_the_stargz_flavour() -> None:
    driver = create_driver(
        DriverConfig(type="estargz", config={"compression": "zstdchunked", "docker2oci": "true"})
    )
    assert isinstance(driver, ZstdChunkedDriver)
    assert driver.build_options.flavour == "stargz"


def test_keys_change_with_output_options_only() -> None:
    assert driver_key("estargz") == driver_key("estargz", threads="1"), "threads do not change the output"
    assert driver_key("estargz") != driver_key("estargz", chunk_size="65536")
    assert driver_key("estargz") != driver_key("estargz", compressor="isal")
    assert driver_key("nydus") == driver_key("nydus", fs_chunk_size="0x100000", docker2oci="true")
    assert driver_key("nydus") != driver_key("nydus", with_referrer="true"), "the image gains a subject"
    assert driver_key("nydus") != driver_key("nydus", compressor="lz4_block")
    assert driver_key("zstdchunked") != driver_key("zstdchunked", flavour="stargz")


def test_nydus_fs_version_and_aligned_chunks() -> None:
    def options(**config: str) -> tuple[int, bool]:
        built = create_driver(DriverConfig(type="nydus", config=config)).build_options  # type: ignore[attr-defined]
        return built.fs_version, built.aligned

    assert options() == (6, True)
    assert options(fs_version="5") == options(rafs_version="5") == (5, False)
    assert options(fs_version="5", fs_align_chunk="true") == (5, True)
    # v6 chunks are always aligned, so the option is accepted and changes nothing, not even the key.
    assert options(fs_align_chunk="true") == (6, True)
    assert (
        driver_key("nydus")
        == driver_key("nydus", fs_align_chunk="true")
        == driver_key("nydus", fs_version="6")
    )
    assert driver_key("nydus", fs_version="5") != driver_key("nydus")
    assert driver_key("nydus", fs_version="5") != driver_key("nydus", fs_version="5", fs_align_chunk="true")


def test_hex_and_list_options() -> None:
    driver = create_driver(
        DriverConfig(
            type="nydus", config={"fs_chunk_size": "0x200000", "prefetch_patterns": "/usr/bin\n/etc"}
        )
    )
    options = driver.build_options  # type: ignore[attr-defined]
    assert options.chunk_size == 0x200000
    assert options.prefetch_patterns == ("/usr/bin", "/etc")


@pytest.mark.parametrize(
    ("value", "chunk_size", "want"),
    [
        ("0x100000", "", 0x100000),
        ("0X1000", "", 0x1000),
        ("65536", "", 0x10000),
        ("0", "", 0),
        ("", "", 0),
        ("0x200000", "0x200000", 0x200000),
    ],
)
def test_nydus_batch_size_as_upstream_writes_it(value: str, chunk_size: str, want: int) -> None:
    driver = create_driver(
        DriverConfig(type="nydus", config={"batch_size": value, "fs_chunk_size": chunk_size})
    )
    assert driver.build_options.batch_size == want  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0x3000", "batch size 0x3000 is not a power of two"),
        ("0x800", "is not a power of two in [4 KiB, 16 MiB]"),
        ("0x200000", "batch size 0x200000 is bigger than chunk size 0x100000"),
        ("1m", "converter.driver.config.batch_size: invalid batch size '1m'"),
        ("0x", "converter.driver.config.batch_size: invalid batch size"),
        ("-4096", "converter.driver.config.batch_size: invalid batch size"),
        ("0x100000000", "converter.driver.config.batch_size: invalid batch size"),
        ("1_048_576", "converter.driver.config.batch_size: invalid batch size"),
    ],
)
def test_nydus_batch_size_refused_as_nydus_image_refuses_it(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        create_driver(DriverConfig(type="nydus", config={"batch_size": value}))
    assert message in str(err.value)


def test_nydus_batch_size_changes_the_key_only_when_on() -> None:
    assert driver_key("nydus") == driver_key("nydus", batch_size="0") == driver_key("nydus", batch_size="")
    assert driver_key("nydus") != driver_key("nydus", batch_size="0x100000")
    assert driver_key("nydus", batch_size="0x10000") != driver_key("nydus", batch_size="0x100000")
