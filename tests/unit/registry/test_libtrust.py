"""The libtrust key id the test token server puts in ``kid`` (registry 2.8 accepts it: token tests)."""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.tokenserver import libtrust_key_id


def test_key_id_shape_and_content() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    kid = libtrust_key_id(key)
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", kid)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b32decode(kid.replace(":", "")) == hashlib.sha256(der).digest()[:30]


def test_key_ids_differ_per_key() -> None:
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key() for _ in range(2)]
    assert libtrust_key_id(keys[0]) != libtrust_key_id(keys[1])
    assert libtrust_key_id(keys[0]) == libtrust_key_id(keys[0])
