"""The GPU image pins what pyproject.toml pins, and its build-time version check works."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
from packaging.requirements import Requirement  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def build_args():
    """ARG NAME=value lines of the Dockerfile."""
    return dict(re.findall(r"^ARG\s+([A-Z_]+)=(\S+)\s*$", DOCKERFILE.read_text(), flags=re.M))


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + project["optional-dependencies"]["gpu"]
    return {Requirement(text).name: Requirement(text) for text in texts}


def test_every_exact_pin_in_pyproject_is_the_images_pin():
    args, reqs = build_args(), pyproject_requirements()
    exact = {name: next(iter(req.specifier)).version for name, req in reqs.items()
             if any(spec.operator == "==" for spec in req.specifier)}
    assert exact, "pyproject pins megatron-core exactly; the image must too"
    for name, version in exact.items():
        arg = name.upper().replace("-", "_") + "_VERSION"
        assert args.get(arg) == version, f"docker/Dockerfile ARG {arg} should be {version} (pyproject.toml)"
        assert f"{name}==${{{arg}}}" in DOCKERFILE.read_text()


def test_every_version_the_image_pins_satisfies_pyproject():
    reqs = pyproject_requirements()
    for arg, version in build_args().items():
        if not arg.endswith("_VERSION"):
            continue
        name = arg[:-len("_VERSION")].lower().replace("_", "-")
        assert name in reqs, f"docker/Dockerfile pins {name}, which pyproject.toml does not list"
        assert reqs[name].specifier.contains(version, prereleases=True)


def test_base_image_is_an_nvidia_pytorch_release_and_the_build_checks_versions():
    text = DOCKERFILE.read_text()
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", build_args()["BASE_IMAGE"])
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, flags=re.M)
    assert "python docker/check_versions.py --gpu" in text


def test_version_check_passes_here_and_fails_on_a_missing_package(tmp_path):
    script = ROOT / "docker" / "check_versions.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    fake = tmp_path / "pyproject.toml"
    fake.write_text('[project]\ndependencies = ["torch>=2.6", "no-such-package-xyz>=1"]\n'
                    '[project.optional-dependencies]\ngpu = []\n')
    out = subprocess.run([sys.executable, str(script), "--pyproject", str(fake)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "no-such-package-xyz" in out.stderr
