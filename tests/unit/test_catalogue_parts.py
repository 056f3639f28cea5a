"""Pure parts of publishing: signatures, keys, SBOM, the published manifest, references,
durations, store configuration and credentials (no server)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagefactory.catalogue import signing
from imagefactory.catalogue.manifest import ImageRef, parse_duration, parse_manifest, parse_ref
from imagefactory.catalogue.publish import (
    check_publishable,
    collect_files,
    make_manifest,
    read_build_manifest,
)
from imagefactory.catalogue.s3 import credentials_for
from imagefactory.catalogue.sbom import package_purl, sbom_json
from imagefactory.catalogue.stores import LocalDirStore, open_store, store_configs
from imagefactory.config import FactoryConfig, S3StoreConfig, load_config
from imagefactory.errors import UserError, ValidationError
from tests.publishing import fake_build

# --- signing ------------------------------------------------------------------------------------


def test_sign_verify_and_every_kind_of_tampering() -> None:
    key = Ed25519PrivateKey.generate()
    doc = {"name": "x", "version": "1", "channels": ["candidate"], "nested": {"a": [1, 2]}}
    signed = signing.sign(doc, key)
    assert signed["signature"]["algorithm"] == "ed25519"
    assert signed["signature"]["key_id"] == signing.key_id(key.public_key())
    signing.verify(signed, key.public_key(), "x")
    # key order and whitespace do not matter: canonical JSON
    signing.verify(json.loads(json.dumps(signed, indent=4)), key.public_key(), "x")
    for change in ({"channels": ["candidate", "stable"]}, {"nested": {"a": [1, 3]}}, {"extra": True}):
        with pytest.raises(signing.SignatureError, match="does not verify"):
            signing.verify({**signed, **change}, key.public_key(), "x")
    with pytest.raises(signing.SignatureError, match="not signed"):
        signing.verify(doc, key.public_key(), "x")
    other = Ed25519PrivateKey.generate()
    with pytest.raises(signing.SignatureError, match=r"signed by key .* configured public key is"):
        signing.verify(signed, other.public_key(), "x")
    bad = {**signed, "signature": {**signed["signature"], "value": "not base64!"}}
    with pytest.raises(signing.SignatureError):
        signing.verify(bad, key.public_key(), "x")


def test_keys_generate_modes_refuse_overwrite_and_loose_permissions(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signing.PRIVATE_KEY_ENV, raising=False)
    monkeypatch.delenv(signing.PUBLIC_KEY_ENV, raising=False)
    priv, pub = signing.generate(tmp_path / "k")
    assert priv.stat().st_mode & 0o777 == 0o600 and pub.stat().st_mode & 0o777 == 0o644
    key = signing.load_private_key(str(priv))
    assert signing.key_id(key.public_key()) == signing.key_id(signing.load_public_key(str(pub)))
    with pytest.raises(UserError, match="already exists"):
        signing.generate(tmp_path / "k")
    priv.chmod(0o640)
    with pytest.raises(UserError, match=r"accessible by group or others \(mode 0640\)") as e:
        signing.load_private_key(str(priv))
    assert e.value.hint == f"chmod 600 {priv}"
    priv.chmod(0o600)
    monkeypatch.setenv(signing.PRIVATE_KEY_ENV, priv.read_text())  # PEM text in the environment
    assert signing.key_id(signing.load_private_key(None).public_key()) == signing.key_id(key.public_key())
    monkeypatch.delenv(signing.PRIVATE_KEY_ENV)
    with pytest.raises(UserError, match="no signing key"):
        signing.load_private_key(None)
    with pytest.raises(UserError, match="no public key"):
        signing.load_public_key(None)
    (tmp_path / "junk.pub").write_text("nope")
    with pytest.raises(UserError, match="not a PEM public key"):
        signing.load_public_key(str(tmp_path / "junk.pub"))


# --- SBOM ---------------------------------------------------------------------------------------


def test_sbom_is_valid_cyclonedx_deterministic_with_packages_and_rke2_zarf(tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    bm = read_build_manifest(fake_build(tmp_path, rke2=True))
    doc = sbom_json(bm)
    assert doc == sbom_json(bm)  # same image, same bytes: re-publishing uploads nothing
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(doc.decode()) is None
    sbom = json.loads(doc)
    assert sbom["specVersion"] == "1.6" and sbom["metadata"]["timestamp"].startswith("2026-11-29T21:35:44")
    assert sbom["metadata"]["component"]["hashes"][1] == {"alg": "SHA-512", "content": bm["image"]["sha512"]}
    purls = {c.get("purl") for c in sbom["components"]}
    assert "pkg:deb/debian/openssh-server@1:9.2p1-2?distro=debian-12" in purls
    assert "pkg:github/rancher/rke2@v1.31.4%2Brke2r1" in purls and "pkg:github/zarf-dev/zarf@v0.84.0" in purls
    rke2 = next(c for c in sbom["components"] if c["name"] == "rke2")
    bundle = next(c for c in rke2["components"] if c["name"] == "rke2.linux-amd64.tar.gz")
    assert bundle["hashes"] == [{"alg": "SHA-256", "content": "cd" * 32}]
    # the images install-rke2 found inside the core tarball, as its sub-components
    core = next(c for c in rke2["components"] if c["name"] == "rke2-images-core.linux-amd64.tar.zst")
    assert [(c["type"], c["purl"]) for c in core["components"]] == [
        ("container", "pkg:docker/rancher/mirrored-pause@3.6?repository_url=docker.io"),
        ("container", "pkg:docker/rancher/rke2-runtime@v1.31.4-rke2r1?repository_url=docker.io")]
    osc = next(c for c in sbom["components"] if c["type"] == "operating-system")
    assert {"name": "imagefactory:kernel", "value": "6.1.0-50-cloud-amd64"} in osc["properties"]
    deps = {d["ref"]: d.get("dependsOn", []) for d in sbom["dependencies"]}
    assert len(deps["os:debian-12"]) == 4


def test_package_purls_per_family() -> None:
    assert str(package_purl("ubuntu", "22.04", "curl", "7.81.0-1ubuntu1.20")) == \
        "pkg:deb/ubuntu/curl@7.81.0-1ubuntu1.20?distro=ubuntu-22.04"
    assert str(package_purl("sle-micro", "5.5", "openssh", "2:8.4p1-150300.3.37.1")) == \
        "pkg:rpm/suse/openssh@8.4p1-150300.3.37.1?distro=sle-micro-5.5&epoch=2"


# --- the published manifest ---------------------------------------------------------------------


def test_manifest_from_a_build(tmp_path: Path) -> None:
    d = fake_build(tmp_path, rke2=True)
    bm = read_build_manifest(d)
    sbom = tmp_path / "sbom.cdx.json"
    sbom.write_bytes(sbom_json(bm))
    files = [f for f, _ in collect_files(d, bm, sbom)]
    assert {f.path for f in files} == {
        "image.qcow2", "sbom.cdx.json", "junit.xml", "build.log", "stig-report.json", "stig-report.html",
        "stig-results.json", "checklists/ubuntu2204-debian.cklb", "checklists/ubuntu2204-debian.ckl"}
    raw = make_manifest(bm, files)
    m = parse_manifest(raw, "x")
    assert (m.name, m.version, m.build_id) == ("debian-12-base",) + ("20261129.213544-a65a",) * 2
    assert m.image.sha512 == bm["image"]["sha512"] and m.image.virtual_size == 4 * 1024**3
    assert m.image.key == f"blobs/sha256/{bm['image']['sha256']}"
    assert m.rke2 == {"version": "v1.31.4+rke2r1"} and m.zarf == {"version": "v0.84.0"}
    assert m.inputs is not None and m.inputs["key"] == "ab" * 32 and len(m.inputs["digest"]) == 64
    assert m.recipe == {"name": "debian-12-base", "digest": "42" * 32}
    assert m.channels == ("candidate",) and m.revoked is None and m.packages == 4
    assert m.stig is not None and m.stig["gate"]["passed"] is True
    assert m.stig["report_html"] == "stig-report.html"
    assert m.stig["checklists"] == ["checklists/ubuntu2204-debian.ckl", "checklists/ubuntu2204-debian.cklb"]
    assert m.tests["ok"] is True and m.tests["passed"] == 47 and "failures" not in m.tests
    assert next(f for f in m.files if f.path == "stig-report.html").media_type.startswith("text/html")


def test_failed_or_untested_builds_are_not_publishable(tmp_path: Path) -> None:
    for i, (kw, msg) in enumerate([({"tests_ok": False}, "failed its boot tests"),
                                   ({"gate": False}, "failed its STIG gate"),
                                   ({"tests_ok": None}, "not boot-tested")]):
        d = fake_build(tmp_path / str(i), **kw)  # type: ignore[arg-type]
        with pytest.raises(UserError, match=msg):
            check_publishable(read_build_manifest(d), d, allow_untested=False)
    check_publishable(read_build_manifest(d), d, allow_untested=True)
    m = json.loads((d / "manifest.json").read_text())
    del m["image"]["sha512"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"manifest.json: image.sha512: missing"):
        read_build_manifest(d)


def test_refs_and_durations() -> None:
    assert parse_ref("debian-12-base") == ImageRef("debian-12-base")
    assert parse_ref("debian-12-base:20261129.000001-aaaa") == \
        ImageRef("debian-12-base", "20261129.000001-aaaa")
    assert parse_ref("rke2-node@stable") == ImageRef("rke2-node", channel="stable")
    for bad in ("", "a:b@c", "x@Stable", "../x", "x:"):
        with pytest.raises(UserError, match="not an image reference"):
            parse_ref(bad)
    assert parse_duration("30m") == dt.timedelta(minutes=30)
    assert parse_duration("24h") == dt.timedelta(hours=24)
    assert parse_duration("7d") == dt.timedelta(days=7)
    assert parse_duration("1d12h") == dt.timedelta(hours=36)
    with pytest.raises(UserError, match="longer than 7 days"):
        parse_duration("8d")
    for bad in ("24", "h", "1y", "-1h", "0s"):
        with pytest.raises(UserError):
            parse_duration(bad)


# --- configuration and credentials ---------------------------------------------------------------


def test_config_stores_section(tmp_path: Path) -> None:
    p = tmp_path / "imagefactory.yaml"
    p.write_text("stores:\n  minio:\n    type: s3\n    endpoint: https://minio.example:9000\n"
                 "    bucket: images\n    part_size: 64MiB\n    ca_bundle: /etc/ssl/site.pem\n"
                 "default_store: minio\nsigning: {public_key: /k.pub}\n")
    cfg = load_config(str(p))
    s3 = cfg.stores["minio"]
    assert isinstance(s3, S3StoreConfig) and s3.verify_tls is True and s3.part_size == 64 * 1024**2
    assert cfg.default_store == "minio" and cfg.signing.public_key == "/k.pub"
    p.write_text("stores:\n  m:\n    type: s3\n    endpoint: minio:9000\n    bucket: b\n    secret_key: x\n"
                 "default_store: nope\n")
    with pytest.raises(ValidationError) as e:
        load_config(str(p))
    text = str(e.value)
    assert "stores.m.s3.endpoint: endpoint 'minio:9000' must be https://host[:port]" in text
    assert "stores.m.s3.secret_key: Extra inputs are not permitted" in text  # no secrets in the config


def test_store_selection_env_and_embedded_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("IMAGEFACTORY_STORE", "IMAGEFACTORY_S3_ENDPOINT", "IMAGEFACTORY_S3_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    cfg = FactoryConfig()
    store = open_store(cfg, tmp_path)
    assert isinstance(store, LocalDirStore) and store.root == tmp_path / "catalogue"
    with pytest.raises(UserError, match="no store named 'x'"):
        open_store(cfg, tmp_path, "x")
    monkeypatch.setenv("IMAGEFACTORY_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("IMAGEFACTORY_S3_BUCKET", "images")
    monkeypatch.setenv("IMAGEFACTORY_S3_VERIFY_TLS", "false")
    s3 = store_configs(cfg, tmp_path)["s3"]
    assert isinstance(s3, S3StoreConfig) and s3.bucket == "images" and s3.verify_tls is False
    monkeypatch.setenv("IMAGEFACTORY_STORE", "s3")
    assert open_store(cfg, tmp_path).name == "s3"


def test_credentials_env_file_and_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("IMAGEFACTORY_S3_", "IMAGEFACTORY_STORE_")):
            monkeypatch.delenv(k)
    creds = tmp_path / "creds.yaml"
    creds.write_text("access_key: AKFILE\nsecret_key: s3cr3t-from-file\n")
    creds.chmod(0o644)
    cfg = S3StoreConfig(type="s3", endpoint="https://m:9000", bucket="b", credentials_file=str(creds))
    with pytest.raises(UserError, match="accessible by group or others") as e:
        credentials_for("minio", cfg)
    assert "s3cr3t" not in str(e.value)
    creds.chmod(0o600)
    c = credentials_for("minio", cfg)
    assert c is not None and c.access_key == "AKFILE" and c.source == str(creds)
    assert "s3cr3t" not in repr(c) and "AKFILE" not in repr(c)  # never in logs or tracebacks
    monkeypatch.setenv("IMAGEFACTORY_S3_ACCESS_KEY", "AKGENERIC")
    monkeypatch.setenv("IMAGEFACTORY_S3_SECRET_KEY", "generic")
    assert credentials_for("minio", cfg).access_key == "AKFILE"  # type: ignore[union-attr]  # file wins
    monkeypatch.setenv("IMAGEFACTORY_STORE_MINIO_ACCESS_KEY", "AKSTORE")
    monkeypatch.setenv("IMAGEFACTORY_STORE_MINIO_SECRET_KEY", "store")
    assert credentials_for("minio", cfg).access_key == "AKSTORE"  # type: ignore[union-attr]
    plain = S3StoreConfig(type="s3", endpoint="https://m:9000", bucket="b")
    assert credentials_for("other", plain).access_key == "AKGENERIC"  # type: ignore[union-attr]
    monkeypatch.delenv("IMAGEFACTORY_S3_SECRET_KEY")
    with pytest.raises(UserError, match="must be set together"):
        credentials_for("other", plain)
    monkeypatch.delenv("IMAGEFACTORY_STORE_MINIO_ACCESS_KEY")
    monkeypatch.delenv("IMAGEFACTORY_STORE_MINIO_SECRET_KEY")
    creds.write_text("access_key: [broken\n")
    with pytest.raises(UserError, match="expected YAML with access_key and secret_key"):
        credentials_for("minio", cfg)
