import dataclasses
import pathlib
import subprocess
import sys

from vrpo_loss import VRPOConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_field_has_help():
    for f in dataclasses.fields(VRPOConfig):
        assert f.metadata.get("help"), f.name


def test_readme_options_table_is_in_sync():
    readme = (ROOT / "README.md").read_text()
    assert VRPOConfig.help() in readme, "regenerate the README's options table: python -c 'import vrpo_loss; print(vrpo_loss.VRPOConfig.help())'"


def test_import_stays_light():
    code = "import sys, vrpo_loss; heavy = [m for m in ('timm', 'transformers', 'lpips', 'torchvision') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_replace_validates():
    cfg = VRPOConfig()
    assert cfg.replace(tau=0.5).tau == 0.5
    try:
        cfg.replace(tau=-1.0)
    except ValueError as e:
        assert "tau" in str(e)
    else:
        raise AssertionError("replace did not validate")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = 'pip install ".[test]" && python -m pytest -q'
    assert cmd in readme and cmd in ci.splitlines()
