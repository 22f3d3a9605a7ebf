"""A release is one command away: the sdist and the wheel build, pass ``twine check`` and carry the package."""

import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

import vrpo_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "vrpo_loss", src / "vrpo_loss", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], check=True, capture_output=True)
    return out


def test_sdist_and_wheel_pass_twine_check(dist):
    pytest.importorskip("twine")
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)], check=True, capture_output=True)


def test_wheel_carries_every_module_at_this_version(dist):
    wheel = next(dist.glob("*.whl"))
    assert wheel.name.startswith(f"vrpo_loss-{vrpo_loss.__version__}-py3-none-any")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vrpo_loss").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    meta = zipfile.ZipFile(wheel).read(f"vrpo_loss-{vrpo_loss.__version__}.dist-info/METADATA").decode()
    for req in ("torch", "timm", "transformers", "lpips"):
        assert f"Requires-Dist: {req}" in meta
