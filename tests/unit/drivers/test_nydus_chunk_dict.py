"""The Nydus driver's ``chunk_dict_ref`` option (upstream's value: an image reference)."""

from __future__ import annotations

import pytest

from accel.drivers.nydus import NydusDriver
from accel.errors import ConfigError


def test_chunk_dict_ref_is_accepted_and_changes_the_output_key() -> None:
    plain = NydusDriver({})
    with_dict = NydusDriver({"chunk_dict_ref": "localhost/chunk_dict/image:latest"})
    assert with_dict.chunk_dict_ref == "localhost/chunk_dict/image:latest"
    assert "chunk_dict_ref=localhost/chunk_dict/image:latest" in with_dict.key()
    assert "chunk_dict_ref" not in plain.key()
    # Off (upstream's sample leaves it empty): the output is what it was without the option.
    assert NydusDriver({"chunk_dict_ref": ""}).key() == plain.key()


def test_a_bad_chunk_dict_ref_is_refused_at_configuration() -> None:
    with pytest.raises(ConfigError, match="chunk_dict_ref"):
        NydusDriver({"chunk_dict_ref": "Not A Reference!"})
