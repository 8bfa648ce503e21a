"""CLI conventions: --version, shell completion, choices shown in --help and checked with one line, exit 2."""
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import cli, repro


def test_version_and_shell_completion():
    from importlib.metadata import version
    r = repro("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"repro {version('repro')}"
    assert "--install-completion" in repro("--help").stdout
    # the installed script completes the scales and the --fuse choices (bash's protocol, as the shell calls it)
    script = Path(sys.executable).parent / "repro"
    for words, cword, expected in (("repro run double_descent --scale g", 4, ["gpu"]),
                                   ("repro run double_descent --fuse ", 4, ["auto", "off"])):
        env = {**os.environ, "_REPRO_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        out = subprocess.run([str(script)], capture_output=True, text=True, env=env)
        assert out.stdout.split() == expected, (words, out.stdout, out.stderr)


def test_choices_in_help_match_what_the_code_accepts():
    from experiments import RECIPES
    from framework.bench.cases import SIZES
    from framework.cli_common import FUSE_CHOICES, SCALES, SIZE_CHOICES
    from framework.planner import FUSE_MODES
    assert FUSE_CHOICES == FUSE_MODES and SIZE_CHOICES == tuple(SIZES)
    assert {s for name in RECIPES.names() for s in RECIPES.get(name)().scales()} == set(SCALES)
    run_help = repro("run", "--help", env={"COLUMNS": "200"}).stdout
    assert "<auto|off>" in run_help and "[smoke|cpu|gpu|paper|...]" in run_help
    assert "<small|full>" in repro("bench", "--help", env={"COLUMNS": "200"}).stdout


def test_a_bad_choice_is_one_line_and_exit_2(tmp_path):
    for args, key in ((["run", "double_descent", "--fuse", "sometimes"], "--fuse"),
                      (["bench", "--size", "huge"], "--size"),
                      (["run", "double_descent", "--seeds", "many"], "--seeds")):
        r = cli(*args, "--runs-dir", tmp_path) if args[0] == "run" else cli(*args)
        assert r.exit_code == 2 and key in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "double_descent").exists()
