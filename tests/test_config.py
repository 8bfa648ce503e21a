"""Config loading, overrides, validation errors (exit 2, key named, no traceback) and run identity."""
import pytest

from framework.config import RunConfig, apply, config_hash, parse_overrides
from framework.registry import UserError
from tests.conftest import repro


@pytest.mark.parametrize("override, must_name", [
    ("model.dept=20", ["model.dept", "did you mean 'model.depth'"]),
    ("model.depth=abc", ["model.depth", "expected int", "'abc'"]),
    ("optim.name=adamm", ["optim.name", "did you mean 'adam'", "adamw", "sgd"]),
    ("model.activation=sigmod", ["model.activation", "did you mean 'sigmoid'"]),
    ("optim.lr=-1", ["optim.lr", "> 0"]),
    ("grid.model.width=[3]", ["grid axis", "model.width"]),
])
def test_cli_config_errors_exit_2_with_one_line(override, must_name, tmp_path):
    r = repro("run", "vanishing_gradients", "--scale", "smoke", override, "--runs-dir", str(tmp_path / "runs"),
              "--reports-dir", str(tmp_path / "reports"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for text in must_name:
        assert text in r.stderr
    assert not (tmp_path / "runs").exists(), "a bad config must not start any run"


def test_cli_unknown_experiment_and_scale(tmp_path):
    r = repro("run", "vanishing_gradient", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "did you mean 'vanishing_gradients'" in r.stderr and "Traceback" not in r.stderr
    r = repro("run", "vanishing_gradients", "--scale", "smok", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "did you mean 'smoke'" in r.stderr


def test_overrides_are_typed():
    cfg = apply(RunConfig(), parse_overrides(["model.depth=20", "optim.lr=1e-3", "model.residual=true",
                                              "tracking.tags=a,b"]))
    assert cfg.model.depth == 20 and cfg.optim.lr == 1e-3 and cfg.model.residual is True
    assert cfg.tracking.tags == ["a", "b"]
    with pytest.raises(UserError, match="model.residual: expected bool"):
        apply(RunConfig(), {"model.residual": "maybe"})
    with pytest.raises(UserError, match="is a section"):
        apply(RunConfig(), {"model": 3})


def test_hash_ignores_defaults_labels_and_tracking():
    base = RunConfig()
    assert config_hash(base) == config_hash(apply(base, {"model.depth": base.model.depth}))
    assert config_hash(base) == config_hash(apply(base, {"variant": "x", "tracking.mode": "offline",
                                                         "tracking.tags": ["t"]}))
    assert config_hash(base) != config_hash(apply(base, {"optim.lr": 0.05}))
    assert config_hash(apply(base, {"experiment": "a"})) != config_hash(apply(base, {"experiment": "b"}))


def test_pinned_hashes():
    """Run folders and W&B ids are these hashes: changing them orphans every stored run."""
    assert config_hash(RunConfig()) == "44136fa355b3"
    assert config_hash(apply(RunConfig(), {"experiment": "vanishing_gradients", "model.depth": 50,
                                           "model.width": 10, "model.activation": "sigmoid"})) == "ba021446addd"
