"""The install contract: console script, conda env == pyproject, CI == README test command."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import genossm
from helpers import ROOT

GENOSSM = Path(sys.executable).parent / "genossm"


def requirement_name(spec: str) -> str:
    return re.split(r"[\s;<>=!~\[]", spec.strip(), maxsplit=1)[0].lower()


def test_console_script_version_and_help():
    out = subprocess.run([str(GENOSSM), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"genossm {genossm.__version__}"
    help_text = subprocess.run([str(GENOSSM), "--help"], capture_output=True, text=True,
                               check=True).stdout
    for command in ("tokenize", "info"):
        assert command in help_text


def test_conda_env_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs" / "genossm.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_names = {requirement_name(d) for d in env["dependencies"] if isinstance(d, str)}
    assert conda_names == {"python", "pip"}
    env_specs = [s for s in pip_section if not s.startswith("-")]
    assert sorted(env_specs) == sorted(project["dependencies"])
    assert any(s.startswith("-e ..") for s in pip_section)  # genossm itself
    assert project["requires-python"] == ">=3.11"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:sh|bash)?\n(.*?)```", readme, flags=re.S)
    first = commands[0].strip().splitlines()
    assert first == ["make run", "make test"]
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make test"]


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run([str(ruff), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
