"""The validation twin of the Packer builder with the real packer binary: every shipped
Packer-backed recipe renders and passes `packer validate` (no network, no VM), and packer's
complaints are mapped back to the recipe key behind them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory import packer as pk
from imagefactory.builders.packer import explain, render_template
from imagefactory.cloudinit import SeedData, render, write_seed_iso
from imagefactory.recipes import RecipeBook
from imagefactory.sshkeys import ephemeral_key
from tests.conftest import RECIPES

pytestmark = pytest.mark.integration
PACKER_RECIPES = {"debian-12-packer", "ubuntu-22.04-cloud", "ubuntu-24.04-cloud", "ubuntu-22.04-packer",
                  "rke2-node-packer", "sle-micro-5.5-base", "rke2-node-sle-micro"}


def test_every_packer_recipe_validates(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "imagefactory.cli", "--json", "--recipes", str(RECIPES),
                        "--workdir", str(tmp_path), "validate"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    recipes = {x["name"]: x for x in json.loads(r.stdout)["recipes"]}
    assert {n for n, x in recipes.items() if x.get("packer") == "valid"} == PACKER_RECIPES
    assert all(x["valid"] for x in recipes.values())


def test_packer_errors_name_the_recipe_key(tmp_path: Path) -> None:
    recipe = RecipeBook(RECIPES).load("ubuntu-22.04-cloud").recipe
    key, _ = ephemeral_key(tmp_path)
    write_seed_iso(render(SeedData("i", "h", "52:54:00:00:00:01")), tmp_path / "seed.iso")
    rendered = render_template(recipe, tmp_path / "t", source_image="https://example.invalid/x.img",
                               source_checksum="0" * 64, output_directory=tmp_path / "out", key=key,
                               seed_iso=tmp_path / "seed.iso", mac="52:54:00:00:00:01", proxy_port=3142,
                               console_log=tmp_path / "c.log", accelerator="bogus", user="ubuntu")
    problems = pk.validate(pk.find_packer(), rendered.directory, var_file=rendered.var_file)
    assert problems and "invalid accelerator" in problems[0]
    assert "(from recipe key: accelerator)" in explain(problems)
