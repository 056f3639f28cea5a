"""Archive signing keys shipped with imagefactory: public keys only, committed after checking
their fingerprints, so that no build trusts a key it fetched over plain HTTP.

`ubuntu-archive-keyring.gpg` is byte for byte `usr/share/keyrings/ubuntu-archive-keyring.gpg`
from the Ubuntu archive's own package `ubuntu-keyring_2021.03.26_all.deb`
(`pool/main/u/ubuntu-keyring/`, sha256 0d0e7ed6b112f5d03eabf3c7eb01ebdacf9c57714b279e90495cfc58c8c4520f;
Debian 12 has no ubuntu-keyring package). Its keys, checked against the fingerprint Canonical
publishes for its 2018 archive key and against the archive itself (gpgv: the InRelease files of
jammy, noble and their -updates/-security pockets verify with the 2018 key, 2026-12-04):

- 790B C727 7767 219C 42C8 6F93 3B4F E6AC C0B2 1F32  Ubuntu Archive Automatic Signing Key (2012)
- 8439 38DF 228D 22F7 B374 2BC0 D94A A3F0 EFE2 1092  Ubuntu CD Image Automatic Signing Key (2012)
- F6EC B376 2474 EDA9 D21B 7022 8719 20D1 991B C93C  Ubuntu Archive Automatic Signing Key (2018),
  the key that signs jammy's and noble's Release files today.

`tests/unit/test_keyrings.py` parses the file and asserts exactly these fingerprints and the
file's sha256: replacing or extending a key is a reviewed change, never a side effect.
"""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent
UBUNTU_ARCHIVE = DIRECTORY / "ubuntu-archive-keyring.gpg"
UBUNTU_ARCHIVE_SHA256 = "1a4dd63e5c76728960a2edddae22e2e0fc53df8e8b87806deb971030ac704eb0"
UBUNTU_ARCHIVE_FINGERPRINTS = (
    "790BC7277767219C42C86F933B4FE6ACC0B21F32",
    "843938DF228D22F7B3742BC0D94AA3F0EFE21092",
    "F6ECB3762474EDA9D21B7022871920D1991BC93C",
)
