"""A plain (non-editable) `pip install .` into a fresh venv works from any directory: configs/ and slurm/
ship with the package."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.helpers import ROOT


def test_a_non_editable_install_runs_from_another_directory(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # the dependencies (torch is 5 GB) come from the test environment, appended after the new venv's own
    # site-packages; a .pth line adds the folder only (its editable-install hook is not run), so `framework`
    # can come from the new install alone
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # what `pip install .` does: build a wheel (with the test environment's setuptools; a new venv's is too
    # old), then install it
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("repro-*.whl")
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    where = tmp_path / "elsewhere"
    where.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REPRO_CONFIGS")}
    origin = subprocess.run([str(py), "-c", "import framework; print(framework.__file__)"], capture_output=True,
                            text=True, cwd=where, env=env)
    assert origin.stdout.startswith(purelib), (origin.stdout, "the installed copy, not the checkout")
    repro = venv / "bin" / "repro"
    listed = subprocess.run([str(repro), "list"], capture_output=True, text=True, cwd=where, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in ("vanishing_gradients", "random_labels", "double_descent", "lr_scaling", "adam_vs_sgd"):
        assert name in listed.stdout
    script = subprocess.run([str(repro), "submit", "double_descent", "--scale", "smoke", "--dry-run"],
                            capture_output=True, text=True, cwd=where, env=env, timeout=300)
    assert script.returncode == 0 and "#SBATCH --array=0-3%8" in script.stdout, script.stderr[-2000:]
    run = subprocess.run([str(repro), "run", "double_descent", "--scale", "smoke", "grid.model.width=[4]",
                          "tracking.mode=disabled"], capture_output=True, text=True, cwd=where, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (where / "reports" / "double_descent" / "smoke" / "verdict.json").exists()
    assert list((where / "runs" / "double_descent").glob("*/summary.json"))
