"""Test stand-ins (test doubles) for upstream release artifacts: RKE2, Zarf and their download hosts.

Product code must not be able to tell these from the real thing by file names, layout or the behaviour
it relies on; see ``release.py`` (assets, install.sh, rke2/kubectl/zarf scripts) and ``mirror.py``
(a local HTTP server standing in for github.com, raw.githubusercontent.com and update.rke2.io).
"""

from .mirror import ReleaseMirror, upstream_bases
from .release import Rke2Release, ZarfRelease, make_rke2_release, make_zarf_release

__all__ = [
    "ReleaseMirror",
    "Rke2Release",
    "ZarfRelease",
    "make_rke2_release",
    "make_zarf_release",
    "upstream_bases",
]
