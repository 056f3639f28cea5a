"""A CycloneDX 1.6 JSON SBOM of an image, built with cyclonedx-python-lib from its build manifest.

Contents: the image itself as the metadata component (type `platform`, sha256/sha512 of the
image file); the operating system (type `operating-system`, with the kernel as a property); every
OS package from the build's package list as a `library` with a package URL - `pkg:deb/<debian|
ubuntu>/<name>@<version>?distro=<family>-<release>` for dpkg-based images, `pkg:rpm/suse/...` for
SLE Micro (the rpm epoch as the `epoch` qualifier, as the purl spec wants); and RKE2 and Zarf as
`application` components (`pkg:github/rancher/rke2@<v>`, `pkg:github/zarf-dev/zarf@<v>`) whose
sub-components are the locked upstream artifacts baked into the image (image tarballs, binary,
install script, init package, Zarf packages) with their sha256 and upstream URL; an RKE2 image
tarball's own sub-components are the container images it holds (`pkg:docker/...`, as the build's
install-rke2 step read them from the tarball).

The SBOM is deterministic: the serial number is a UUID5 of the image's sha256 and the timestamp
is the build's creation time, so re-publishing an unchanged image produces the same bytes, the
same blob and no upload. The package list records no per-package architecture, so purls carry
none rather than a guess.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from .. import __version__

SPEC_VERSION = "1.6"
MEDIA_TYPE = "application/vnd.cyclonedx+json"
FILE_NAME = "sbom.cdx.json"
_NAMESPACE = uuid.UUID("5b0d3c1e-6a8f-4c55-9a53-2f5f1d0e7a11")  # imagefactory SBOM serial numbers
_TOOL_PURL = PackageURL("generic", None, "imagefactory", __version__)


def package_purl(family: str, release: str, name: str, version: str) -> PackageURL:
    """The purl of one OS package of an image of `family` `release`."""
    distro = f"{family}-{release}"
    if family in ("debian", "ubuntu"):
        return PackageURL("deb", family, name, version, {"distro": distro})
    epoch, sep, rest = version.partition(":")
    if sep and epoch.isdigit():
        return PackageURL("rpm", "suse", name, rest, {"distro": distro, "epoch": epoch})
    return PackageURL("rpm", "suse", name, version, {"distro": distro})


def image_purl(ref: str) -> PackageURL:
    """`pkg:docker/<namespace>/<name>@<tag>?repository_url=<registry>` of an image reference."""
    registry, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    namespace, _, name = repo.rpartition("/")
    return PackageURL("docker", namespace or None, name, tag or None,
                      qualifiers={"repository_url": registry})


def _artifact(a: dict[str, Any], parent: str, images: list[str]) -> Component:
    name = str(a["name"])
    c = Component(
        name=name, type=ComponentType.FILE, bom_ref=f"{parent}/{name}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=str(a["sha256"]))],
        external_references=[ExternalReference(type=ExternalReferenceType.DISTRIBUTION,
                                               url=XsUri(str(a["url"])))],
        properties=[Property(name="imagefactory:role", value=str(a.get("role", "")))])
    for ref in images:  # the container images inside an RKE2 image tarball (install-rke2 read them)
        purl = image_purl(ref)
        c.components.add(Component(name=purl.name, version=purl.version, type=ComponentType.CONTAINER,
                                   purl=purl, bom_ref=f"{parent}/{name}/{ref}"))
    return c


def _product(name: str, version: str, purl: PackageURL, artifacts: list[dict[str, Any]],
             contents: dict[str, list[str]]) -> Component:
    ref = purl.to_string()
    c = Component(name=name, version=version, type=ComponentType.APPLICATION, purl=purl, bom_ref=ref)
    for a in artifacts:
        c.components.add(_artifact(a, ref, contents.get(str(a["name"]), [])))
    return c


def build_sbom(manifest: dict[str, Any]) -> Bom:
    """The SBOM of the image a build manifest describes."""
    os_ = manifest["os"]
    family, release = str(os_["family"]), str(os_["release"])
    image = manifest["image"]
    created = dt.datetime.fromisoformat(str(manifest["created"]))
    bom = Bom(serial_number=uuid.uuid5(_NAMESPACE, str(image["sha256"])))
    bom.metadata.timestamp = created
    bom.metadata.tools.components.add(Component(name="imagefactory", version=__version__,
                                                type=ComponentType.APPLICATION, purl=_TOOL_PURL,
                                                bom_ref=_TOOL_PURL.to_string()))
    root = Component(
        name=str(manifest["name"]), version=str(manifest["version"]), type=ComponentType.PLATFORM,
        bom_ref=f"image:{manifest['name']}@{manifest['version']}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=str(image["sha256"])),
                HashType(alg=HashAlgorithm.SHA_512, content=str(image["sha512"]))],
        properties=[Property(name="imagefactory:format", value=str(image.get("format", ""))),
                    Property(name="imagefactory:recipe-digest",
                             value=str(manifest.get("recipe", {}).get("digest", "")))])
    bom.metadata.component = root
    osc = Component(name=family, version=release, type=ComponentType.OPERATING_SYSTEM,
                    bom_ref=f"os:{family}-{release}",
                    properties=[Property(name="imagefactory:arch", value=str(os_.get("arch", "")))]
                    + ([Property(name="imagefactory:kernel", value=str(manifest["kernel"]))]
                       if manifest.get("kernel") else []))
    bom.components.add(osc)
    packages: list[Component] = []
    for p in manifest.get("packages") or []:
        purl = package_purl(family, release, str(p["name"]), str(p["version"]))
        packages.append(Component(name=str(p["name"]), version=str(p["version"]), type=ComponentType.LIBRARY,
                                  purl=purl, bom_ref=purl.to_string()))
    for c in packages:
        bom.components.add(c)
    bom.register_dependency(osc, packages)
    artifacts = list((manifest.get("inputs") or {}).get("artifacts") or [])
    top = [osc]
    for key, owner, repo in (("rke2", "rancher", "rke2"), ("zarf", "zarf-dev", "zarf")):
        info = manifest.get(key)
        if not info:
            continue
        version = str(info["version"])
        mine = [a for a in artifacts if str(a.get("role", "")).startswith(key)]
        product = _product(key, version, PackageURL("github", owner, repo, version), mine,
                           dict(info.get("preloaded") or {}))
        bom.components.add(product)
        top.append(product)
    bom.register_dependency(root, top)
    return bom


def sbom_json(manifest: dict[str, Any]) -> bytes:
    """The SBOM as CycloneDX 1.6 JSON bytes (deterministic, see the module docstring)."""
    return (JsonV1Dot6(build_sbom(manifest)).output_as_string(indent=1) + "\n").encode()
