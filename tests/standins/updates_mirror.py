"""Stand-in upstream documents for `updates check` and `lock update`, served by `ReleaseMirror`.

``UpstreamSite(root)`` writes, under the root a `ReleaseMirror` serves (URL path = file path):
- apt archives: ``<archive>/dists/<suite>/Release`` with a `Date:` field and a SHA256 section,
  as deb.debian.org/debian, deb.debian.org/debian-security or archive.ubuntu.com/ubuntu lay them
  out (``release("debian", "bookworm", ...)``); a new date or package set gives a new file;
- cloud images: ``<directory>/<name>`` plus the ``SHA256SUMS`` next to it listing every image in
  that directory, like cloud-images.ubuntu.com (``cloud_image("ubuntu/jammy", "x.img", b"...")``).

RKE2 channels and releases come from `ReleaseMirror` and `release.make_rke2_release` as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class UpstreamSite:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def release(self, archive: str, suite: str, date: str, packages: str = "base") -> str:
        """Write `<archive>/dists/<suite>/Release`; returns its sha256."""
        index = f"Package: {packages}\nVersion: 1\n".encode()
        text = (f"Origin: Stand-in\nLabel: Stand-in\nSuite: {suite}\nCodename: {suite.split('-')[0]}\n"
                f"Date: {date}\nArchitectures: amd64\nComponents: main\n"
                f"Description: stand-in archive for imagefactory tests\nSHA256:\n"
                f" {hashlib.sha256(index).hexdigest()} {len(index)} main/binary-amd64/Packages\n")
        path = self.root / archive / "dists" / suite / "Release"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        (path.parent / "main/binary-amd64").mkdir(parents=True, exist_ok=True)
        (path.parent / "main/binary-amd64/Packages").write_bytes(index)
        return hashlib.sha256(text.encode()).hexdigest()

    def remove_release(self, archive: str, suite: str) -> None:
        (self.root / archive / "dists" / suite / "Release").unlink()

    def cloud_image(self, directory: str, name: str, content: bytes) -> str:
        """Write the image and rewrite the directory's SHA256SUMS; returns the image's sha256."""
        d = self.root / directory
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content)
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()} *{p.name}\n"
                 for p in sorted(d.iterdir()) if p.is_file() and p.name != "SHA256SUMS"]
        (d / "SHA256SUMS").write_text("".join(lines))
        return hashlib.sha256(content).hexdigest()
