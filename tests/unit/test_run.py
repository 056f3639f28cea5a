from __future__ import annotations

import logging
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
