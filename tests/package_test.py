"""Packaging: the wheel's contents, the dependency metadata, and (slow) a fresh install.

The wheel test builds from a copy of the working tree (setuptools, no network, ~10 s). The
slow test installs a fresh clone into a new virtual environment from PyPI (network; about
6 minutes on a 2-core machine) and runs the commands from an empty directory.
"""

from __future__ import annotations

import ast
import configparser
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

pytestmark = pytest.mark.integration  # trains through the loop / subprocesses

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = (
    "luminet-train",
    "luminet-convert",
    "luminet-quickstart",
    "luminet-report",
    "luminet-teachers",
)
_SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def _pins(path: pathlib.Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[_canonical(name)] = version.strip()
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools")  # in a Python 3.11 venv; requirements-test.txt pins it
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("luminet_jax", "configs", "assets"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in _SOURCES:
        shutil.copy(ROOT / name, src / name)
    # --no-index and no version check: pip reaches for PyPI otherwise (a DNS lookup, seen
    # with strace), which hangs where packets are dropped; --no-cache-dir: nothing is
    # written under ~/.cache/pip.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--no-index", "--disable-pip-version-check", "--no-cache-dir",
         "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = (tmp / "dist").glob("luminet_jax-*.whl")
    with zipfile.ZipFile(path) as archive:
        archive.source = src  # the copy it was built from
        yield archive


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_wheel_ships_the_package_with_configs_and_sample_only(wheel):
    names = set(wheel.namelist())
    assert _dist_info(wheel, "top_level.txt").split() == ["luminet_jax"]
    # Nothing but luminet_jax in site-packages: no top-level configs/ or assets/.
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"luminet_jax"}
    src = wheel.source
    for config in (src / "configs").glob("*.py"):
        assert f"luminet_jax/configs/{config.name}" in names
    assert "luminet_jax/assets/cifar10-sample.tar.gz" in names
    assert "luminet_jax/assets/make_cifar10_sample.py" not in names  # a repository tool
    sample = wheel.getinfo("luminet_jax/assets/cifar10-sample.tar.gz")
    assert sample.file_size == (src / "assets" / "cifar10-sample.tar.gz").stat().st_size
    for module in (src / "luminet_jax").rglob("*.py"):  # every module and subpackage
        assert module.relative_to(src).as_posix() in names


def test_wheel_declares_the_console_scripts(wheel):
    parser = configparser.ConfigParser()
    parser.read_string(_dist_info(wheel, "entry_points.txt"))
    scripts = dict(parser["console_scripts"])
    assert sorted(scripts) == sorted(SCRIPTS)
    for target in scripts.values():  # each names a function of its module
        module, function = target.split(":")
        tree = ast.parse(wheel.read(module.replace(".", "/") + ".py"))
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, target
    metadata = _dist_info(wheel, "METADATA")
    assert "Requires-Dist: jax<0.13,>=0.10.2" in metadata
    assert 'Requires-Dist: jax[cuda13]<0.13,>=0.10.2; extra == "gpu"' in metadata


def test_dependency_ranges_hold_the_pinned_versions():
    from packaging.requirements import Requirement

    project = PYPROJECT["project"]
    declared = {_canonical(r.name): r for r in map(Requirement, project["dependencies"])}
    pins = _pins(ROOT / "requirements.txt")
    assert set(pins) == set(declared)  # the same packages
    for name, version in pins.items():
        assert declared[name].specifier.contains(version), (name, version, declared[name])
    extras = project["optional-dependencies"]
    test_pins = _pins(ROOT / "requirements-test.txt")
    (gpu,) = map(Requirement, extras["gpu"])
    assert gpu.name == "jax" and gpu.extras == {"cuda13"}
    assert gpu.specifier == declared["jax"].specifier
    # jax: the pinned 0.10.2 (Python 3.11) through 0.12 (Python >= 3.12 accelerator images).
    for version, admitted in (("0.10.2", True), ("0.11.2", True), ("0.12.1", True),
                              ("0.10.1", False), ("0.13.0", False)):  # fmt: skip
        assert declared["jax"].specifier.contains(version) == admitted, version
    test = {_canonical(r.name): r for r in map(Requirement, extras["test"])}
    assert str(test["ruff"].specifier) == f"=={test_pins['ruff']}"  # the lint tool is pinned
    assert test["pytest"].specifier.contains(test_pins["pytest"])
    (torch,) = map(Requirement, extras["torch"])
    assert torch.specifier.contains(test_pins["torch"])
    assert sorted(project["scripts"]) == sorted(SCRIPTS)


def _run(args, cwd, timeout=3600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fresh_install_runs_from_any_directory(tmp_path):
    """`pip install <clone>` (not editable) into a new venv, then the commands elsewhere.

    Needs network access to PyPI (it downloads jax, tensorflow-cpu, ...: about 1 GB).
    """
    clone, venv, empty = tmp_path / "clone", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    assert _run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path).returncode == 0
    assert _run([sys.executable, "-m", "venv", str(venv)], tmp_path).returncode == 0
    result = _run([str(venv / "bin" / "pip"), "install", "-q", str(clone)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list((venv / "lib").glob("python*/site-packages/configs"))
    result = _run([str(venv / "bin" / "luminet-train"), "--help"], empty)
    assert "--config" in result.stdout and "--workdir" in result.stdout, result.stdout
    result = _run([str(venv / "bin" / "luminet-convert"), "--help"], empty)
    assert result.returncode == 0 and "--torch" in result.stdout, result.stdout
    result = _run([str(venv / "bin" / "luminet-teachers"), "list"], empty)
    assert result.returncode == 0 and "\nresnet32x4 " in result.stdout, result.stdout
    result = _run(
        [str(venv / "bin" / "python"), "-m", "luminet_jax.quickstart", "--epochs", "1",
         f"--workdir={tmp_path / 'qs'}"], empty,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| resnet8 | luminet |" in result.stdout
    result = _run([str(venv / "bin" / "luminet-report"), str(tmp_path / "qs")], empty)
    assert result.returncode == 0 and (tmp_path / "qs" / "curves.png").is_file(), result.stderr
