"""The shipped archive keyrings hold exactly the keys whose fingerprints were checked."""

from __future__ import annotations

import hashlib

import pytest

from imagefactory import keyrings


def fingerprints(data: bytes) -> list[str]:
    """V4 fingerprints of the primary public keys in a binary OpenPGP keyring (RFC 4880 4.2,
    12.2): SHA-1 over 0x99, the two-byte body length and the public-key packet body."""
    out, i = [], 0
    while i < len(data):
        tag_byte = data[i]
        assert tag_byte & 0x80, f"not an OpenPGP packet at offset {i}"
        if tag_byte & 0x40:  # new format
            tag, first = tag_byte & 0x3F, data[i + 1]
            if first < 192:
                length, head = first, 2
            elif first < 224:
                length, head = ((first - 192) << 8) + data[i + 2] + 192, 3
            else:
                assert first == 255, "partial body lengths do not occur in keyrings"
                length, head = int.from_bytes(data[i + 2:i + 6], "big"), 6
        else:  # old format
            tag, ltype = (tag_byte >> 2) & 0x0F, tag_byte & 0x03
            size = {0: 1, 1: 2, 2: 4}[ltype]
            length, head = int.from_bytes(data[i + 1:i + 1 + size], "big"), 1 + size
        body = data[i + head:i + head + length]
        if tag == 6:  # public key (not subkeys: tag 14)
            assert body[0] == 4, "only V4 keys are expected"
            out.append(hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper())
        i += head + length
    return out


def test_ubuntu_archive_keyring_is_the_checked_file() -> None:
    data = keyrings.UBUNTU_ARCHIVE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == keyrings.UBUNTU_ARCHIVE_SHA256
    assert sorted(fingerprints(data)) == sorted(keyrings.UBUNTU_ARCHIVE_FINGERPRINTS)
    # the key that signs today's jammy/noble Release files
    assert "F6ECB3762474EDA9D21B7022871920D1991BC93C" in keyrings.UBUNTU_ARCHIVE_FINGERPRINTS


def test_fingerprint_parser_sees_a_changed_key() -> None:
    data = bytearray(keyrings.UBUNTU_ARCHIVE.read_bytes())
    data[20] ^= 0xFF  # inside the first key's modulus
    assert sorted(fingerprints(bytes(data))) != sorted(keyrings.UBUNTU_ARCHIVE_FINGERPRINTS)
    with pytest.raises(AssertionError):
        fingerprints(b"\x00" + bytes(data))
