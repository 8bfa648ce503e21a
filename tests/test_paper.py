"""Paper scale: real image datasets, the papers' models, every recipe's `paper` scale, on-device augmentation,
and `repro bench`. MNIST tests read the real files from ../shared/data (skipped, with the reason, without them);
CIFAR code paths run on small CIFAR-shaped data written in CIFAR's own on-disk format."""
import json
import re

import pandas as pd
import pytest
import torch

from experiments import RECIPES
from framework.config import flatten, to_dict
from framework.data import TensorBatches, augment, build_splits
from framework.datasets import class_count
from framework.module import build_module
from framework.process import build_trainer
from framework.runner import train
from tests.helpers import cli, repro, shared_data


@pytest.mark.parametrize("name", RECIPES.names())
def test_paper_scale_validates_and_builds(name, cifar_root, tmp_path):
    """Every paper-scale config validates, builds its model and data module, and maps a batch of the right
    shape to one output per class; the Trainer it asks for (precision, accelerator) constructs."""
    runs = RECIPES.get(name)().runs("paper", {"data.root": str(cifar_root), "data.verify": False})
    assert runs, name
    seen = set()
    for run in runs:
        cfg = run.cfg
        if cfg.data.name == "mnist":  # the real files (a recipe whose paper scale is MNIST's, as LeCun et al.'s)
            cfg.data.root, cfg.data.verify = str(shared_data("MNIST")), True
        key = json.dumps({k: v for k, v in flatten(to_dict(cfg)).items()
                          if k.startswith(("model.", "data.name", "data.augment"))}, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        splits = build_splits(cfg.data)
        module = build_module(cfg, splits)
        if cfg.data.name == "cifar10":
            assert splits.in_shape == (3, 32, 32)
        batches = TensorBatches(splits.x_train, splits.y_train, min(cfg.data.batch_size, 8), shuffle=True,
                                augment=cfg.data.augment, padding=cfg.data.crop_padding)
        x, y = next(iter(batches))
        assert x.shape[1:] == splits.x_train.shape[1:]
        module.eval()
        with torch.no_grad():
            out = module(x)
        n_out = class_count(cfg.data.name, cfg.data.n_classes) if splits.n_classes else 1
        assert out.shape == (len(x), n_out), (run.cfg.variant, out.shape)
        build_trainer(cfg, [], [], tmp_path)


def paper_departures(name: str, spec: dict | None = None) -> list[str]:
    """Where recipe `name`'s paper scale (from its YAML, or `spec`) departs from configs/paper-settings.yaml: each
    run's value of each key the table gives for it, unless the table lists the key as a departure with that value;
    and every listed departure must be one (the paper's value differs from the one here, which some run has)."""
    import yaml

    from framework.grid import expand
    from framework.recipe import config_dir
    table = yaml.safe_load((config_dir() / "paper-settings.yaml").read_text())[name]
    recipe = RECIPES.get(name)()
    runs = expand(name, spec or recipe.spec(), "paper", [], recipe.spec_path())
    departed = {d["key"]: d for d in table.get("departures") or []}
    problems = []
    if {r.cfg.seed for r in runs} != set(range(8)):
        problems.append(f"{name}: the paper scale runs seeds {sorted({r.cfg.seed for r in runs})}, not 0-7")
    for setting in table["settings"]:
        where = setting["where"]
        chosen = [r for r in runs if all(r.axes.get(k, flatten(to_dict(r.cfg)).get(k)) == v for k, v in where.items())]
        if not chosen:
            problems.append(f"{name}: no paper-scale run matches {where}")
        for run in chosen:
            values = flatten(to_dict(run.cfg))
            for key, paper in setting["paper"].items():
                if key in departed or values.get(key) == paper or (isinstance(paper, float) and
                                                                   values.get(key) == pytest.approx(paper)):
                    continue
                problems.append(f"{name} [{run.cfg.variant}]: {key} = {values.get(key)!r}, the paper's is {paper!r} "
                                f"({table['source'][:60]}...)")
    for key, d in departed.items():
        here = {flatten(to_dict(r.cfg)).get(key) for r in runs}
        if d["here"] not in here or d["paper"] == d["here"]:
            problems.append(f"{name}: departure {key} is not one: here {sorted(map(str, here))}, paper {d['paper']}")
    return sorted(set(problems))


@pytest.mark.parametrize("name", RECIPES.names())
def test_paper_scales_use_the_papers_settings(name):
    """Every recipe's paper scale, expanded, against the table of what its paper trained (configs/paper-settings.yaml):
    every key the same as the paper's, or a departure written in the table with its reason."""
    assert paper_departures(name) == []


def test_the_paper_check_catches_a_paper_scale_that_inherits_a_cpu_setting():
    """random_labels' paper scale once inherited the cpu run's data.n_train: 600 and trained on 600 CIFAR images
    instead of Zhang et al.'s 50,000; with the old scale back, the check names it."""
    import copy
    spec = copy.deepcopy(RECIPES.get("random_labels")().spec())
    del spec["scales"]["paper"]["run"]["data"]["n_train"]
    problems = paper_departures("random_labels", spec)
    assert problems and all("data.n_train = 600" in p for p in problems if "n_train" in p), problems


@pytest.mark.parametrize("name", RECIPES.names())
def test_gpu_scale_expands_and_a_slice_trains_on_the_cpu(name, tmp_path):
    """Every recipe's gpu scale: its protocol on real MNIST (where the cpu scale reads digits), 8 seeds, on a GPU when
    there is one. Here, without one: it expands and validates, every digits run became an MNIST run of the same
    training size, and a slice (the first runs of one seed, two steps each) trains on the real files."""
    from framework.datasets import training_size
    from framework.store import RunStore
    recipe = RECIPES.get(name)()
    cpu, gpu = recipe.runs("cpu", seeds=1), recipe.runs("gpu", seeds=1)
    assert len(cpu) == len(gpu) and len(recipe.runs("gpu")) == 8 * len(gpu)
    for a, b in zip(cpu, gpu):
        assert b.cfg.trainer.accelerator == "auto"
        if a.cfg.data.name == "digits":
            assert b.cfg.data.name == "mnist" and training_size(b.cfg.data) == training_size(a.cfg.data)
        else:
            assert b.cfg.data == a.cfg.data
    root = shared_data("MNIST")
    typed = {"data.root": str(root), "trainer.max_steps": 2, "trainer.accelerator": "cpu",
             "tracking.mode": "disabled"}
    sliced = [r for r in recipe.runs("gpu", typed, seeds=1) if r.cfg.data.name == "mnist"][:2]
    store = RunStore(tmp_path / "runs")
    for run in sliced:
        summary = train(run.cfg, store)
        assert summary["status"] == "done" and summary["steps"] == 2, summary


def test_mnist_paper_recipe_trains_on_the_real_files(tmp_path):
    """`repro run` at paper scale on real MNIST: a ResNet-18 of width 2 takes a few steps and is tested on
    the official 10,000 test images."""
    root = shared_data("MNIST")
    r = repro("run", "double_descent", "--scale", "paper", "data.name=mnist", f"data.root={root}",
              "data.n_train=256", "trainer.max_steps=3", "grid.model.width=[2]", "tracking.mode=disabled",
              "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"))
    assert r.returncode == 0, r.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "reports" / "double_descent" / "paper" / "runs.csv")
    row = runs.iloc[0]
    assert row["status"] == "done" and row["steps"] == 3 and row["n_train"] == 256 and row["n_test"] == 10000
    assert 0.0 <= row["test_error"] <= 1.0 and row["model.name"] == "resnet18"


def test_fashion_mnist_conv_net_trains(tiny, store):
    root = shared_data("FashionMNIST")
    cfg = tiny(data__name="fashion_mnist", data__root=str(root), data__n_train=512, data__batch_size=64,
               data__augment="crop", model__name="cnn5", model__width=4, trainer__max_steps=6,
               optim__name="adam", optim__lr=0.01)
    summary = train(cfg, store)
    assert summary["status"] == "done" and summary["steps"] == 6 and summary["n_test"] == 10000
    assert summary["train_loss"] < summary["initial_train_loss"]


def test_missing_dataset_names_the_expected_files(tmp_path):
    r = cli("run", "random_labels", "--scale", "paper", f"data.root={tmp_path / 'empty'}", "data.download=false",
            "--runs-dir", tmp_path / "runs", "--reports-dir", tmp_path / "reports")
    assert r.exit_code == 2
    assert "cifar-10-batches-py" in r.stderr and "data_batch_1" in r.stderr and "data.download=false" in r.stderr
    assert "Traceback" not in r.stderr
    status = json.loads(next((tmp_path / "runs" / "random_labels").glob("*/status.json")).read_text())
    assert status["status"] == "failed" and "data_batch_1" in status["error"]


def test_checksum_mismatch_is_reported(tiny, cifar_root):
    from framework.registry import UserError
    cfg = tiny(data__name="cifar10", data__root=str(cifar_root), data__download=False)
    with pytest.raises(UserError, match="MD5 check .* data.verify=false"):
        build_splits(cfg.data)


def test_where_the_data_lives_is_not_part_of_a_runs_identity(tiny):
    from framework.config import config_hash
    a = tiny(data__name="cifar10", data__root="/a")
    b = tiny(data__name="cifar10", data__root="/b", data__download=False, data__verify=False, data__on_device=False)
    assert config_hash(a) == config_hash(b) != config_hash(tiny(data__name="cifar10", data__augment="crop"))


def test_crop_and_flip():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    centred = augment(x, torch.tensor([[2, 2], [2, 2]]), None, padding=2)
    assert torch.equal(centred, x)
    corner = augment(x, torch.tensor([[0, 0], [4, 4]]), None, padding=2)
    assert torch.equal(corner[0, :, 2:, 2:], x[0, :, :2, :2]) and corner[0, :, :2].abs().sum() == 0
    assert torch.equal(corner[1, :, :2, :2], x[1, :, 2:, 2:]) and corner[1, :, 2:].abs().sum() == 0
    flipped = augment(x, None, torch.tensor([True, False]), padding=2)
    assert torch.equal(flipped[0], x[0].flip(2)) and torch.equal(flipped[1], x[1])


def test_augmentation_is_fixed_by_seed_and_epoch_and_survives_a_resume():
    x, y = torch.randn(50, 3, 8, 8), torch.arange(50)
    make = lambda: TensorBatches(x, y, 8, shuffle=True, seed=3, augment="crop_flip", padding=2)  # noqa: E731
    a, b = make(), make()
    a.set_epoch(1), b.set_epoch(1)
    first, second = list(a), list(b)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first, second))
    b.set_epoch(2)
    assert not torch.equal(first[0][0], next(iter(b))[0])
    resumed = make()
    resumed.load_state_dict({"epoch": 1, "batches_done": 3})
    rest = list(resumed)
    assert len(rest) == len(first) - 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first[3:], rest))
    assert not all(torch.equal(xb, x[yb]) for xb, yb in first)  # it did augment


@pytest.mark.slow  # 80 s; tests/test_fused.py's fused bench case checks the ratio lines in CI
def test_bench_prints_ratios_and_records_them(tmp_path):
    out = tmp_path / "benchmarks.md"
    cases = ("deep_mlp_50x10", "wide_mlp_2x2048", "resnet18_cifar")  # the fused case: tests/test_fused.py
    r = repro("bench", "--size", "small", *[a for c in cases for a in ("--case", c)], "--record", str(out),
              timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    table = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and "case" not in ln]
    assert len(table) == 3
    for case in cases:  # the median pair ratio lies in its range, and the record says what was printed
        line = next(ln for ln in r.stdout.splitlines() if case in ln)
        ratio, lo, hi = re.search(r"(\d+\.\d+) \((\d+\.\d+)-(\d+\.\d+)\)", line).groups()
        assert 0 < float(lo) <= float(ratio) <= float(hi), line
        assert any(case in row and f"{ratio} ({lo}-{hi})" in row for row in table), (line, table)


def test_bench_rejects_an_unknown_case():
    r = cli("bench", "--case", "resnet50")
    assert r.exit_code == 2 and "unknown case 'resnet50'" in r.stderr
