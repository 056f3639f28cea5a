"""A catalogue image as a Terraform `harvester_image` resource, for sites that drive Harvester
with Terraform's `harvester` provider instead of `imagefactory harvester upload`.

The attributes are the provider's (terraform-provider-harvester, `internal/provider/image/
schema_image.go`, `pkg/constants/constants_image.go`): `name`, `namespace`, `display_name`,
`source_type` (`download`: the provider cannot upload a file), `url`, `checksum` (SHA-512, which
Harvester checks after the download), `description` and optionally `storage_class_name`. `name`
and `display_name` are the ones `harvester upload` gives the same image, so both ways of importing
it agree on what exists.

The URL must answer HEAD as well as GET: Harvester sends a HEAD before it creates the backing image
and fails on any status >= 400, which an S3 URL presigned for GET answers with 403. So the URL is
the image's content-addressed blob under a base the operator names (an anonymous-read `blobs/`
prefix of the catalogue bucket, or a site mirror of the store) - stable, unlike a presigned URL,
which would force Terraform to replace the image on every run (`url` is ForceNew) - and it is
probed as Harvester would probe it before anything is printed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..catalogue.manifest import Manifest
from ..errors import UserError
from .images import display_name, download_problem, object_name, redact

RESOURCE_TYPE = "harvester_image"


@dataclass(frozen=True)
class TerraformImage:
    resource: str  # the Terraform resource name (an identifier)
    attributes: dict[str, str]

    def hcl(self, ref: str) -> str:
        lines = [f"# imagefactory: {ref} (checksum = its signed SHA-512)"]
        lines.append(f"resource {hcl_string(RESOURCE_TYPE)} {hcl_string(self.resource)} {{")
        width = max(len(k) for k in self.attributes)
        lines += [f"  {k.ljust(width)} = {hcl_string(v)}" for k, v in self.attributes.items()]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {"type": RESOURCE_TYPE, "name": self.resource, "attributes": self.attributes}


def hcl_string(value: str) -> str:
    """A quoted HCL string: JSON's escapes, plus HCL's template sequences (`${`, `%{`) doubled so
    that nothing in a name or URL is ever interpolated."""
    return json.dumps(value).replace("${", "$${").replace("%{", "%%{")


def resource_name(m: Manifest) -> str:
    """A Terraform identifier for the image: letters, digits, '_' and '-', not starting with a digit."""
    raw = re.sub(r"[^A-Za-z0-9_-]+", "_", m.name)
    return raw if re.match(r"^[A-Za-z_]", raw) else f"image_{raw}"


def blob_url(url_base: str, m: Manifest) -> str:
    if not re.match(r"^https?://[^/\s]+", url_base):
        raise UserError(f"--url-base: '{url_base}' is not an http(s) URL",
                        hint="the URL under which the store's blobs/ prefix is readable, e.g. "
                             "https://minio.site.example/catalogue")
    return f"{url_base.rstrip('/')}/{m.image.key}"


def terraform_image(m: Manifest, url_base: str, *, namespace: str = "default",
                    storage_class: str | None = None, resource: str | None = None,
                    cafile: str | None = None) -> TerraformImage:
    """The `harvester_image` resource for a verified manifest; UserError (exit 2) when Harvester's
    own checks would fail the download: a HEAD >= 400, a TLS failure, a size Longhorn cannot take.
    A URL this host cannot reach at all (a site store) is logged, not refused."""
    if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
        raise UserError(f"--namespace: '{namespace}' is not a Kubernetes namespace name",
                        hint="lower case letters, digits and '-', at most 63")
    if resource is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", resource):
        raise UserError(f"--resource: '{resource}' is not a Terraform identifier",
                        hint="letters, digits, '_' and '-', starting with a letter or '_'")
    if storage_class is not None and not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", storage_class):
        raise UserError(f"--storage-class: '{storage_class}' is not a StorageClass name",
                        hint="lower case letters, digits, '-' and '.'")
    url = blob_url(url_base, m)
    problem = download_problem(url, m.image.size, cafile)
    if problem is not None:
        raise UserError(f"{redact(url)}: Harvester could not download {m.ref} from here: {problem}",
                        hint="make the blobs/ prefix readable without a signature (HEAD and GET), "
                             "or import the image with 'imagefactory harvester upload'")
    attributes = {"name": object_name(m), "namespace": namespace, "display_name": display_name(m),
                  "description": f"imagefactory {m.ref}, sha256 {m.image.sha256}",
                  "source_type": "download", "url": url, "checksum": m.image.sha512}
    if storage_class:
        attributes["storage_class_name"] = storage_class
    return TerraformImage(resource or resource_name(m), attributes)
