from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from imagefactory.errors import CommandFailed, CommandNotFound
from imagefactory.run import run


def test_logs_the_command_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imagefactory")
    r = run(["echo", "hello world"])
    assert r.stdout == "hello world\n"
    assert "+ echo 'hello world'" in caplog.text
    assert "  hello world" in caplog.text


def test_missing_binary_names_the_package() -> None:
    with pytest.raises(CommandNotFound) as e:
        run(["mmdebstrap-not-here"])
    assert "not found" in str(e.value)
    with pytest.raises(CommandNotFound) as e2:
        run(["/nonexistent/qemu-img"])
    assert e2.value.hint and "qemu-utils" in e2.value.hint


def test_failure_carries_stderr_tail(fake_bin: Path) -> None:
    tool = fake_bin / "failing-tool"
    tool.write_text("#!/bin/sh\necho 'E: the mirror said no' >&2\nexit 3\n")
    tool.chmod(0o755)
    with pytest.raises(CommandFailed) as e:
        run(["failing-tool", "arg"])
    assert e.value.returncode == 3
    assert "E: the mirror said no" in str(e.value)
    assert run(["failing-tool"], check=False).returncode == 3


def test_secrets_go_through_env_not_argv(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imagefactory")
    r = run(["sh", "-c", 'echo "${#TOKEN}"'], env={"TOKEN": "s3cr3t"})
    assert r.stdout == "6\n"  # the child saw it
    assert "s3cr3t" not in caplog.text


def test_timeout_is_a_failure() -> None:
    with pytest.raises(CommandFailed, match="timed out"):
        run(["sleep", "5"], timeout=0.2)


def test_children_never_see_the_projects_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"IMAGEFACTORY_SIGNING_KEY": "k1", "IMAGEFACTORY_STORE_MINIO_SECRET_KEY": "k2",
               "IMAGEFACTORY_STORE_MINIO_ACCESS_KEY": "k3", "AWS_SECRET_ACCESS_KEY": "k4",
               "AWS_SESSION_TOKEN": "k5", "CI_JOB_TOKEN": "k6", "GITHUB_TOKEN": "k7",
               "HARVESTER_PASSWORD": "k8", "SOMETHING_ELSE": "k9"}
    kept = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "https_proxy": "http://p:3128",
            "NO_PROXY": "localhost", "IMAGEFACTORY_STIG_REFERENCE": "/ref", "PACKER_PLUGIN_PATH": "/pp",
            "TMPDIR": "/tmp"}
    for k, v in {**secrets, **kept}.items():
        monkeypatch.setenv(k, v)
    seen = dict(line.split("=", 1) for line in run(["env"]).stdout.splitlines() if "=" in line)
    assert not set(secrets) & set(seen), set(secrets) & set(seen)
    assert {k: seen.get(k) for k in kept} == kept
    # what a caller hands over explicitly still arrives
    assert run(["sh", "-c", 'echo "$IMAGEFACTORY_PROXY"'], env={"IMAGEFACTORY_PROXY": "x"}).stdout == "x\n"


def test_credentials_in_urls_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imagefactory")
    run(["echo", "deb", "http://bob:hunter2@mirror.example/ubuntu", "https://tok@h/x", "mailto:a@b"])
    assert "hunter2" not in caplog.text and "bob" not in caplog.text and "tok@" not in caplog.text
    assert "+ echo deb http://***@mirror.example/ubuntu https://***@h/x mailto:a@b" in caplog.text
