"""The recipe format as typed, frozen models.

Parsed once, validated completely, then never mutated: mutable build state lives in
`imagefactory.build.BuildContext`. Unknown keys are errors everywhere (`extra="forbid"`).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

ACCELERATOR_ENV = "IMAGEFACTORY_ACCELERATOR"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OS(Strict):
    family: Literal["debian", "ubuntu", "sle-micro"] = Field(
        description="OS family; decides which distro module builds the image"
    )
    release: str = Field(description="release of the family, e.g. '12', '22.04', '5.5'")
    arch: Literal["amd64", "arm64"] = "amd64"

    @field_validator("release", mode="before")
    @classmethod
    def _release_as_text(cls, v: object) -> object:
        # YAML reads `release: 12` as an int and `22.04` as a float; both mean the same text.
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def check_url(v: str, pattern: str = r"^(https?|file)://\S+$",
              what: str = "an http://, https:// or file:// URL") -> str:
    """A recipe URL: the scheme and shape `pattern` allows, and no user-info - credentials in a
    URL end up in build logs, manifests and the published catalogue."""
    if not re.match(pattern, v):
        raise ValueError(f"'{v}' must be {what}")
    if "@" in urlsplit(v).netloc:
        raise ValueError("a URL with credentials (user:password@) is refused: it would be logged and "
                         "published; give the mirror's credentials to apt/packer out of band "
                         "(an auth.conf or netrc on the build host)")
    return v


class MmdebstrapSource(Strict):
    type: Literal["mmdebstrap"]
    mirror: str = Field("http://deb.debian.org/debian", description="apt mirror URL")
    suite: str = Field(description="suite or codename, e.g. bookworm")
    components: tuple[str, ...] = ("main",)
    variant: Literal["extract", "custom", "essential", "apt", "required", "minbase",
                     "buildd", "important", "debootstrap", "standard"] = "minbase"
    keyring: str | None = Field(None, description="keyring file or directory for apt")

    @field_validator("mirror")
    @classmethod
    def _mirror_url(cls, v: str) -> str:
        return check_url(v)


_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


class CloudImageSource(Strict):
    type: Literal["cloud-image"]
    url: str = Field(description="URL of the upstream cloud image (qcow2)")
    checksum: str | None = Field(None, description="'sha256:<hex>' or 'sha512:<hex>'")
    checksum_url: str | None = Field(
        None, description="URL of a SHA256SUMS-style file listing the image"
    )

    @field_validator("url", "checksum_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v)

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, v: str | None) -> str | None:
        if v is not None and not _DIGEST.match(v):
            raise ValueError("must be 'sha256:<64 hex>' or 'sha512:<128 hex>'")
        return v

    @model_validator(mode="after")
    def _one_checksum(self) -> CloudImageSource:
        if (self.checksum is None) == (self.checksum_url is None):
            raise ValueError("set exactly one of 'checksum' and 'checksum_url'")
        return self


class LocalImageSource(Strict):
    """An image from the local store as the base (e.g. debian-12-base for debian-12-packer)."""

    type: Literal["local-image"]
    image: str = Field(description="store reference: NAME (latest) or NAME:VERSION")

    @field_validator("image")
    @classmethod
    def _ref(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9.-]*(:[0-9A-Za-z.-]+)?$", v):
            raise ValueError("must be NAME or NAME:VERSION of a stored image")
        return v


Source = Annotated[MmdebstrapSource | CloudImageSource | LocalImageSource, Field(discriminator="type")]


# Debian/RPM package names (with an optional apt `=version` pin): letters, digits and + . - _;
# never a shell word, a path or an option (`vim; touch x`, `../../etc/shadow`, `-o...`)
PACKAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_+.-]*(=[A-Za-z0-9.+~:_-]+)?")
# systemd unit names: name[@instance][.type]; no path, no option
UNIT_NAME = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9_:.\\-]*(@[A-Za-z0-9_:.\\-]*)?")
MAX_DISK = 64 * 1024**4  # qcow2's practical limit; far beyond any golden image
MAX_GUEST_MEMORY = 256 * 1024**3


def _grammar(grammar: re.Pattern[str], what: str) -> AfterValidator:
    # per item, so that an error names the item's index (in the user's own file: recipes/load.py)
    def check(name: str) -> str:
        if not grammar.fullmatch(name):
            raise ValueError(f"'{name}' is not a valid {what}")
        return name
    return AfterValidator(check)


PackageName = Annotated[str, _grammar(PACKAGE_NAME, "package name (letters, digits, '+', '.', '-', "
                                                    "'_'; optionally =VERSION)")]
UnitName = Annotated[str, _grammar(UNIT_NAME, "systemd unit name (name[@instance][.type], no '/')")]


class Packages(Strict):
    install: tuple[PackageName, ...] = ()
    remove: tuple[PackageName, ...] = ()
    auto_updates: bool = Field(
        False, description="Debian/Ubuntu: run apt's periodic jobs (unattended security upgrades) in "
        "the deployed VM; off: the timers are masked (air-gapped sites update by rebuilding)")


class FileSpec(Strict):
    path: str = Field(description="absolute path inside the image")
    content: str | None = None
    template: str | None = Field(
        None, description="jinja2 template, relative to the recipe directory"
    )
    mode: str = Field("0644", description="octal permission bits as a string")
    owner: str = Field("root:root", description="user:group inside the image")

    @field_validator("path")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/"):
            raise ValueError("must be an absolute path without '..'")
        return v

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # `mode: 644` means 0644 (leading-zero ints arrive as text, see load.py)
        if isinstance(v, str) and not re.match(r"^0?[0-7]{3,4}$", v):
            raise ValueError("must be octal permission bits such as '0644'")
        return v

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$", v):
            raise ValueError("must be 'user:group'")
        return v

    @model_validator(mode="after")
    def _one_body(self) -> FileSpec:
        if (self.content is None) == (self.template is None):
            raise ValueError("set exactly one of 'content' and 'template'")
        return self


class Services(Strict):
    enable: tuple[UnitName, ...] = ()
    disable: tuple[UnitName, ...] = ()
    mask: tuple[UnitName, ...] = ()


class Kernel(Strict):
    cmdline: tuple[str, ...] = Field((), description="extra kernel command line arguments")
    package: str | None = Field(
        None, description="kernel package (flavour), e.g. linux-image-generic; default: the family's "
        "(Debian linux-image-cloud-amd64, Ubuntu linux-image-virtual)")

    @field_validator("package")
    @classmethod
    def _package(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[a-z0-9][a-z0-9+.-]+$", v):
            raise ValueError("must be a package name")
        return v


Firmware = Literal["bios", "uefi", "hybrid"]


class Disk(Strict):
    size: ByteSize = Field(ByteSize(4 * 1024**3), le=MAX_DISK, description="virtual disk size, e.g. 4GiB")
    format: Literal["qcow2", "raw"] = "qcow2"
    compression: Literal["none", "zlib", "zstd"] = "zstd"
    firmware: Firmware = Field(
        "hybrid", description="what the disk boots on: bios (SeaBIOS/legacy), uefi, or hybrid (both: "
        "GPT with a BIOS boot partition and an EFI system partition, like the distributions' cloud images)")
    secure_boot: bool = Field(
        True, description="uefi/hybrid: the distribution's signed shim, GRUB and kernel, checked at build "
        "time; the boot test boots the UEFI clone with Secure Boot enforced")
    partition_table: Literal["msdos", "gpt"] | None = Field(
        None, description="default: gpt (msdos for firmware: bios); uefi and hybrid need gpt")

    @property
    def table(self) -> Literal["msdos", "gpt"]:
        """The partition table actually written."""
        if self.partition_table is not None:
            return self.partition_table
        return "msdos" if self.firmware == "bios" else "gpt"

    @property
    def uefi(self) -> bool:
        return self.firmware in ("uefi", "hybrid")

    @property
    def bios(self) -> bool:
        return self.firmware in ("bios", "hybrid")


class Tests(Strict):
    suites: tuple[Literal["hygiene", "recipe", "rke2"], ...] = ("hygiene", "recipe")
    clones: int = Field(2, ge=1, le=4, description="VMs booted from the image at once")
    boot_timeout: int = Field(900, ge=30, description="seconds to wait for SSH")
    timeout: int = Field(900, ge=30, description="seconds for the test suites")
    memory: ByteSize = Field(ByteSize(1024**3), ge=256 * 1024**2, le=MAX_GUEST_MEMORY,
                             description="guest memory")
    cpus: int = Field(2, ge=1, le=16)
    tcg_cpus: Literal["shared", "asked"] = Field(
        "shared", description="under TCG: 'shared' gives the clones booted together at most one vCPU "
                              "per host core between them; 'asked' gives each clone `cpus`")


RKE2_VERSION = re.compile(r"^v\d+\.\d+\.\d+(-rc\d+)?\+rke2r\d+$")
ZARF_VERSION = re.compile(r"^v\d+\.\d+\.\d+$")
RKE2_IMAGE_SETS = ("core", "canal", "calico", "cilium", "flannel", "multus", "traefik", "harvester",
                   "vsphere", "ingress-nginx")
# Per-node settings: written at first boot (config.yaml.d/50-join.yaml), never baked.
RKE2_PER_NODE_KEYS = ("server", "token", "token-file", "agent-token", "agent-token-file", "node-name",
                      "node-ip", "node-external-ip", "tls-san", "with-node-id", "cluster-init")


class Rke2(Strict):
    version: str | None = Field(None, description="exact release, e.g. v1.31.4+rke2r1")
    channel: str | None = Field(None, description="release channel resolved by 'lock update'")
    arch: Literal["amd64", "arm64"] = "amd64"
    images: Literal["all"] | tuple[str, ...] = Field(
        ("core", "canal"), description="image tarball sets to bake ('all' = the full tarball)")
    install_prefix: str | None = Field(
        None, description="INSTALL_RKE2_TAR_PREFIX; default /usr/local, /opt/rke2 on SLE Micro")
    config: dict[str, Any] = Field(default_factory=dict, description="extra static config.yaml keys")
    registries: dict[str, Any] = Field(default_factory=dict, description="registries.yaml content")
    profile: Literal["cis"] | None = "cis"
    selinux: bool = False

    @field_validator("version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None and not RKE2_VERSION.match(v):
            raise ValueError("must look like v1.31.4+rke2r1")
        return v

    @field_validator("images")
    @classmethod
    def _images(cls, v: object) -> object:
        if isinstance(v, tuple):
            unknown = [i for i in v if i not in RKE2_IMAGE_SETS]
            if unknown:
                raise ValueError(f"unknown image set(s) {unknown}; known: {', '.join(RKE2_IMAGE_SETS)}")
        return v

    @field_validator("config")
    @classmethod
    def _static_only(cls, v: dict[str, Any]) -> dict[str, Any]:
        per_node = sorted(k for k in v if k.rstrip("+") in RKE2_PER_NODE_KEYS)
        if per_node:
            raise ValueError(f"{', '.join(per_node)}: per-node settings are written at first boot, "
                             "never baked into an image")
        if v.get("profile") not in (None, "cis"):
            raise ValueError("profile is set by rke2.profile")
        return v

    @model_validator(mode="after")
    def _one_version(self) -> Rke2:
        if (self.version is None) == (self.channel is None):
            raise ValueError("set exactly one of 'version' and 'channel'")
        return self


class ZarfVerify(Strict):
    key: str = Field(description="cosign public key (PEM) that signed every baked package, relative "
                     "to the recipe directory; baked, and passed as --key to every deploy")

    @field_validator("key")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or not v:
            raise ValueError("must be a path inside the recipe directory (relative, without '..')")
        return v


class Zarf(Strict):
    version: str = Field(description="exact release, e.g. v0.84.0")
    init_package: bool = Field(True, description="bake the matching zarf-init package beside it")
    packages: tuple[str, ...] = Field(
        (), description="URLs of extra Zarf package files (zarf-package-*.tar.zst) to bake; pinned "
        "by sha256 in the lock, deployed at first boot with --zarf-deploy")
    verify: ZarfVerify | None = Field(
        None, description="refuse unsigned or wrongly signed packages, at build and at first boot")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not ZARF_VERSION.match(v):
            raise ValueError("must look like v0.84.0")
        return v

    @field_validator("packages")
    @classmethod
    def _package_urls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for url in v:
            check_url(url, r"^(https?|file)://\S+/[^/]+\.tar(\.zst)?$",
                      "an http(s):// or file:// URL of a .tar.zst package")
        return v


STIG_BENCHMARKS = ("ubuntu2204", "ubuntu2404", "slmicro5", "rke2")  # those with a catalogue in stig/


class StigTailoring(Strict):
    disable: dict[str, str] = Field(
        default_factory=dict, description="STIG id -> reason: do not apply this fix (the check still runs "
        "and a failure needs a waiver)")
    enable: tuple[str, ...] = Field((), description="waive-by-default STIG ids to apply anyway")
    values: dict[str, str] = Field(default_factory=dict, description="placeholder values, e.g. banner_text")

    @field_validator("disable")
    @classmethod
    def _reasons(cls, v: dict[str, str]) -> dict[str, str]:
        empty = [k for k, r in v.items() if not str(r or "").strip()]
        if empty:
            raise ValueError(f"a reason is required to disable {', '.join(empty)}")
        return v


class StigGate(Strict):
    # An open (unwaived) CAT I always fails the build; CAT II/III limits are a site choice.
    cat2_max_open: int | None = Field(None, ge=0, description="open CAT II findings allowed (null: any)")
    cat3_max_open: int | None = Field(None, ge=0, description="open CAT III findings allowed (null: any)")


class PackerOptions(Strict):
    package_mirrors: tuple[str, ...] | None = Field(
        None, description="URL prefixes the build VM may fetch packages from through the host's "
        "allow-list proxy (default: the distro's public mirrors)")
    update: bool = Field(True, description="apply all available package updates in the build VM")

    @field_validator("package_mirrors")
    @classmethod
    def _mirror_urls(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for url in v or ():
            check_url(url, r"^https?://\S+$", "an http:// or https:// URL prefix")
        return v


class Stig(Strict):
    benchmarks: tuple[Literal["ubuntu2204", "ubuntu2404", "slmicro5", "rke2"], ...] = Field(
        description="STIG catalogues to apply: the OS one (ubuntu2204 for Ubuntu 22.04 and Debian 12's "
        "family-generic controls, ubuntu2404 for Ubuntu 24.04, slmicro5 for SLE Micro) and rke2 for "
        "RKE2 nodes")
    tailoring: StigTailoring = StigTailoring()
    waivers: tuple[str, ...] = Field(
        (), description="waiver files: a shipped set by name (stig/waivers/<name>.yaml, e.g. rke2-node) "
        "or a path relative to the recipe directory")
    gate: StigGate = StigGate()

    @field_validator("waivers")
    @classmethod
    def _waivers_inside(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            # the shipped set or the recipe directory: never an absolute path or a climb out
            if name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"'{name}': a shipped set's name or a path inside the recipe "
                                 "directory (no leading '/', no '..')")
        return v
    rke2_role: Literal["server", "agent"] = Field(
        "server", description="RKE2 role the image is reported for (server covers the agent controls)")
    openscap: bool = Field(True, description="also scan offline with OpenSCAP where SSG content exists")

    @field_validator("benchmarks")
    @classmethod
    def _some(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one benchmark (or remove the stig section)")
        return v


class Recipe(Strict):
    """A merged, validated recipe."""

    name: str = Field(description="set from the file name; not a YAML key")
    description: str = ""
    extends: str | None = Field(None, description="name of the recipe this one builds on")
    os: OS
    source: Source
    packages: Packages = Packages()
    files: tuple[FileSpec, ...] = ()
    services: Services = Services()
    kernel: Kernel = Kernel()
    disk: Disk = Disk()
    builder: Literal["rootfs", "packer"] = "rootfs"
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    tests: Tests = Tests()
    rke2: Rke2 | None = None
    zarf: Zarf | None = None
    stig: Stig | None = None
    packer: PackerOptions = PackerOptions()

    def effective_accelerator(self) -> Literal["auto", "kvm", "tcg"]:
        """The recipe's accelerator unless `IMAGEFACTORY_ACCELERATOR` overrides it."""
        env = os.environ.get(ACCELERATOR_ENV, "").strip()
        if env in ("auto", "kvm", "tcg"):
            return env  # type: ignore[return-value]
        return self.accelerator


def recipe_json_schema() -> dict[str, object]:
    """JSON Schema of the recipe *file* format, for editors (name comes from the file name)."""
    schema = Recipe.model_json_schema()
    props = schema.get("properties", {})
    assert isinstance(props, dict)
    props.pop("name", None)
    req = schema.get("required")
    if isinstance(req, list) and "name" in req:
        req.remove("name")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "imagefactory recipe"
    return schema
