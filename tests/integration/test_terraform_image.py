"""`imagefactory images terraform`: a catalogue image as the Terraform harvester provider's
`harvester_image` resource - parsed with a real HCL parser (python-hcl2), and created on the
Harvester double exactly as the provider would create it from those attributes (its image
constructor: displayName, sourceType, url, checksum), which then downloads and checks it."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagefactory.catalogue.publish import publish
from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.harvester.api import IMAGES
from imagefactory.harvester.terraform import hcl_string
from tests.harvester import HarvesterDouble
from tests.integration.test_harvester import api_for, qcow2_build, uploader

pytestmark = pytest.mark.integration


def serve(root: Path, head_status: int | None = None) -> tuple[http.server.ThreadingHTTPServer, str]:
    """The store directory over plain HTTP; `head_status` makes HEAD fail as S3 does on a URL
    presigned for GET."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_HEAD(self) -> None:
            if head_status is None:
                super().do_HEAD()
            else:
                self.send_error(head_status, "SignatureDoesNotMatch")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    signer = Ed25519PrivateKey.generate()
    store = LocalDirStore("local", tmp_path / "catalogue")
    store.prepare()
    build = qcow2_build(tmp_path, "20261205.040000-dddd")
    publish(build, store, signer, signer.public_key())
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "pub.pem").write_bytes(signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "imagefactory.yaml"
    config.write_text(yaml.safe_dump({
        "signing": {"public_key": str(keys / "pub.pem")},
        "stores": {"local": {"type": "local", "path": str(tmp_path / "catalogue")}},
    }))
    httpd, url = serve(tmp_path / "catalogue")
    try:
        yield {"config": config, "url": url, "root": tmp_path / "catalogue", "tmp": tmp_path, "build": build}
    finally:
        httpd.shutdown()
        httpd.server_close()


def cli(site: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagefactory.cli", "--config", str(site["config"]),
                           "--workdir", str(site["tmp"] / "work"), *args],
                          capture_output=True, text=True, timeout=60)


def test_hcl_parses_and_the_provider_object_imports_on_harvester(site: dict[str, Any]) -> None:
    r = cli(site, "images", "terraform", "rke2-node-debian", "--url-base", site["url"] + "/",
            "--namespace", "harvester-public", "--storage-class", "longhorn-single")
    assert r.returncode == 0, r.stderr
    parsed = hcl2.loads(r.stdout)
    (resource,) = parsed["resource"]
    # python-hcl2 8 keeps the quotes of labels and strings in its output
    ((name, attrs),) = resource['"harvester_image"'].items()
    attrs = {k: v.strip('"') for k, v in attrs.items() if k != "__is_block__"}
    assert name == '"rke2-node-debian"'
    m = json.loads((site["build"] / "manifest.json").read_text())
    assert attrs == {
        "name": "rke2-node-debian-20261205-040000-dddd", "namespace": "harvester-public",
        "display_name": "rke2-node-debian-20261205.040000-dddd",
        "description": f"imagefactory rke2-node-debian:20261205.040000-dddd, sha256 {m['image']['sha256']}",
        "source_type": "download", "url": f"{site['url']}/blobs/sha256/{m['image']['sha256']}",
        "checksum": m["image"]["sha512"], "storage_class_name": "longhorn-single"}
    j = cli(site, "--json", "images", "terraform", "rke2-node-debian:20261205.040000-dddd",
            "--url-base", site["url"])
    assert j.returncode == 0, j.stderr
    data = json.loads(j.stdout)
    assert data["type"] == "harvester_image" and data["attributes"]["url"] == attrs["url"]

    # What the provider does with those attributes (resource_image_constructor.go), on the double:
    h = HarvesterDouble(tick=0.02).start()
    try:
        api = api_for(h, site["tmp"], namespace="default")
        api.create(IMAGES, {
            "apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineImage",
            "metadata": {"name": attrs["name"], "namespace": "default",
                         "annotations": {"field.cattle.io/description": attrs["description"]}},
            "spec": {"displayName": attrs["display_name"], "sourceType": attrs["source_type"],
                     "url": attrs["url"], "checksum": attrs["checksum"]}})
        obj = uploader(api, site["tmp"]).wait_imported(attrs["name"])
        assert obj["status"]["progress"] == 100 and obj["status"]["size"] == m["image"]["size"]
        assert h.errors == []
    finally:
        h.stop()


def test_a_url_harvester_could_not_download_is_refused(site: dict[str, Any]) -> None:
    httpd, url = serve(site["root"], head_status=403)
    try:
        t = time.monotonic()
        r = cli(site, "images", "terraform", "rke2-node-debian", "--url-base", url)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert time.monotonic() - t < 5
    assert r.returncode == 2 and "HEAD answered 403" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""  # nothing half-written to paste into a Terraform file
    for args, words in ((["--url-base", "ftp://x"], "--url-base: 'ftp://x' is not an http(s) URL"),
                        (["--url-base", url, "--namespace", "Bad_NS"], "--namespace: 'Bad_NS'"),
                        (["--url-base", url, "--resource", "9x"], "--resource: '9x' is not a Terraform")):
        r = cli(site, "images", "terraform", "rke2-node-debian", *args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)


def test_hcl_strings_never_interpolate() -> None:
    assert hcl_string("a${b}%{c}\"d") == '"a$${b}%%{c}\\"d"'
    parsed = hcl2.loads(f'x = {hcl_string("${var.secret}")}\n')
    assert "var.secret" in str(parsed["x"]) and "$${" in str(parsed["x"])
