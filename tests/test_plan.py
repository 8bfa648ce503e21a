"""`repro plan`: a suite's runs, fused groups and estimated device time, before anything trains."""
import re

from experiments import RECIPES
from framework.config import RunConfig
from framework.cost import DEVICES, forward_flops, group_seconds, steps
from framework.datasets import training_size as train_size
from framework.overrides import apply
from framework.planner import plan
from tests.helpers import cli


def test_plan_prints_counts_groups_and_an_estimate_for_each_scale():
    result = cli("plan", "lr_scaling")
    assert result.exit_code == 0, result.output
    recipe = RECIPES.get("lr_scaling")()
    for scale in recipe.scales():
        runs = recipe.runs(scale)
        groups = plan(runs)
        row = next(line for line in result.output.splitlines() if re.search(rf"lr_scaling\s+│ {scale}\s", line))
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert cells[2] == str(len(runs))
        sizes = dict(re.findall(r"(\d+)x(\d+)", cells[3]))
        assert sum(int(k) * int(n) for k, n in sizes.items()) == len(runs) and sum(map(int, sizes.values())) == len(groups)
        assert float(cells[5]) > 0 and float(cells[6]) > 0
    assert cli("plan", "lr_scaling", "--scale", "nope").exit_code == 2


def test_the_estimate_is_built_from_the_run_itself():
    """Training size as framework.data splits it, forward FLOPs counted on the model, and a group's time growing
    with its steps and its members."""
    cfg = apply(RunConfig(), {"data.name": "digits", "data.val_fraction": 0.15, "data.test_fraction": 0.25,
                              "model.name": "linear", "data.batch_size": 64, "trainer.max_epochs": 3})
    assert train_size(cfg.data) == 1797 - 449 - 270 == 1078
    assert steps(cfg) == 3 * 17
    assert forward_flops(cfg) == 2 * 64 * 10                          # one 64 -> 10 matrix product a sample
    cifar = apply(RunConfig(), {"data.name": "cifar10", "data.val_fraction": 0.1, "model.name": "resnet18"})
    assert train_size(cifar.data) == 45_000 and 0.9e9 < forward_flops(cifar) < 1.3e9  # 0.56 G multiply-adds
    longer = apply(RunConfig(), {**{"data.name": "digits", "model.name": "linear"}, "trainer.max_epochs": 6})
    base = apply(RunConfig(), {"data.name": "digits", "model.name": "linear", "trainer.max_epochs": 3})
    gpu = DEVICES["cuda"]
    assert group_seconds([longer], gpu) == 2 * group_seconds([base], gpu)
    assert group_seconds([base] * 16, gpu) > group_seconds([base], gpu)
