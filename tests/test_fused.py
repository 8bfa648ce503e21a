"""Fused training: a group of runs trained as one model is, run by run, the same as each run trained alone.

Tolerance (float32 on a CPU): a fused member's per-step metrics and summary numbers agree with the unfused run's
within a relative 1e-4 (batched and single matrix products sum in another order; measured differences are
~1e-7). Integer fields (status, steps, epochs, diverged and fit steps) are equal.
"""
import json

import pandas as pd
import pytest
import torch

from framework.config import config_hash
from framework.grid import Run
from framework.planner import plan, plan_suite
from framework.preemption import Preempted
from framework.runner import train, train_group
from framework.store import RunStore
from tests.helpers import cli, repro
from tests.helpers.fused import assert_same_run
from tests.helpers.signals import SignalAt


def members(tiny, big_lr=1e4, **shared):
    """Four runs of one shape: a seed x lr sweep with a diverging member and an early-stopping member."""
    base = dict(trainer__max_epochs=6, data__n_samples=400, **shared)
    return [tiny(seed=0, optim__lr=0.05, **base),
            tiny(seed=1, optim__lr=0.2, **base),
            tiny(seed=2, optim__lr=big_lr, **base),                                # diverges
            tiny(seed=1, optim__lr=0.2, trainer__stop_at_train_acc=0.8, **base)]   # stops early


@pytest.mark.parametrize("batch_norm", [False, True])
def test_fused_members_equal_their_runs_alone(batch_norm, tiny, tmp_path):
    # batch norm keeps a step of 1e4 finite here, in a chaotic run (losses of 1e8) whose float32 rounding
    # differences grow past the tolerance: its group gets a large step instead
    cfgs = members(tiny, 1.0 if batch_norm else 1e4, model__batch_norm=batch_norm, schedule__name="cosine",
                   schedule__warmup_epochs=1)
    alone, fused = RunStore(tmp_path / "alone"), RunStore(tmp_path / "fused")
    singles = [train(c, alone) for c in cfgs]
    together = train_group(cfgs, fused)
    assert [s["status"] for s in together] == [s["status"] for s in singles]
    if not batch_norm:
        assert together[2]["status"] == "diverged" and together[2]["steps"] < singles[0]["steps"]
    assert together[3]["fit_step"] is not None and together[3]["steps"] < together[0]["steps"]
    for c in cfgs:
        assert_same_run(alone, fused, "test", config_hash(c))
        assert (fused.run_dir("test", config_hash(c)) / "config.yaml").exists()
        assert fused.status_record("test", config_hash(c))["group"].endswith(
            fused.group_dir("test", [config_hash(x) for x in cfgs]).name)
    # fusion is not identity: the fused store's runs are finished runs of the same hashes
    assert [s.get("skipped") for s in train_group(cfgs, fused)] == [True] * 4
    assert train(cfgs[0], fused)["skipped"]


def test_each_member_keeps_its_own_batch_norm_statistics(tiny, tmp_path):
    from framework.fused_layers import FusedBatchNorm, fuse_nets
    from framework.nets import build_model
    cfg = tiny(model__batch_norm=True)
    nets = [build_model(cfg.model, (6,), 3) for _ in range(3)]
    fused = fuse_nets(nets)
    x = torch.randn(3 * 16, 6) * torch.tensor([1.0, 5.0, 20.0]).repeat_interleave(16)[:, None]
    fused.train()(x)
    for k, net in enumerate(nets):
        net.train()(x[16 * k:16 * (k + 1)])
    bns = [m for m in fused.modules() if isinstance(m, FusedBatchNorm)]
    for k, net in enumerate(nets):
        singles = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
        for f, s in zip(bns, singles):
            torch.testing.assert_close(f.running_var[k], s.running_var)
    assert not torch.allclose(bns[0].running_var[0], bns[0].running_var[2])


def test_a_preempted_group_resumes_exactly(tiny, tmp_path):
    cfgs = members(tiny)[:2] + [tiny(seed=5, optim__lr=0.01, trainer__max_epochs=6, data__n_samples=400)]
    ids = [config_hash(c) for c in cfgs]
    reference = RunStore(tmp_path / "ref")
    train_group(cfgs, reference)
    store = RunStore(tmp_path / "run")
    with pytest.raises(Preempted):
        train_group(cfgs, store, callbacks=[SignalAt(23)])
    checkpoint = store.group_checkpoint("test", ids)
    assert checkpoint.exists() and json.loads((checkpoint.parent / "members.json").read_text()) == ids
    for run_id in ids:
        record = store.status_record("test", run_id)
        assert record["status"] == "pending" and record["checkpoint"] == str(checkpoint)
    # the suite's planner puts the same group back together from the checkpoint it left
    runs = [Run(c, {}) for c in reversed(cfgs)]
    assert [[r.run_id for r in g] for g in plan_suite(runs, store)] == [ids]
    resumed = train_group(cfgs, store)
    assert not checkpoint.exists()
    for run_id, summary in zip(ids, resumed):
        assert summary["status"] == "done" and store.status_record("test", run_id)["resumed_from"] == str(checkpoint)
        for key in ("train_loss", "val_loss", "test_acc", "steps", "grad_norm_first"):
            assert summary[key] == reference.summary("test", run_id)[key], key
        pd.testing.assert_frame_equal(store.read_frame("test", run_id, "metrics.csv"),
                                      reference.read_frame("test", run_id, "metrics.csv"))


def test_several_wandb_runs_from_one_process(tiny, tmp_path, monkeypatch):
    from framework.wandb_files import offline_runs, read_run
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    cfgs = [tiny(tracking__mode="auto", seed=s, optim__lr=lr) for s, lr in [(0, 0.05), (1, 0.1)]]
    store = RunStore(tmp_path / "runs")
    summaries = train_group(cfgs, store)
    for cfg, summary in zip(cfgs, summaries):
        run_id = config_hash(cfg)
        (folder,) = offline_runs(store.run_dir("test", run_id))
        run = read_run(folder)
        assert run["id"] == run_id and run["config"]["seed"] == cfg.seed
        losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
        assert losses == pytest.approx(store.read_frame("test", run_id, "metrics.csv")["train/loss"].dropna().tolist())
        assert any(k.startswith("grad_norm/layer_") for row in run["history"] for k in row)
        assert run["summary"]["train_loss"] == pytest.approx(summary["train_loss"])


def test_planner_groups_runs_of_one_shape(tiny):
    runs = [Run(tiny(seed=s, optim__lr=lr), {}) for s in range(3) for lr in (0.05, 0.1)]
    runs += [Run(tiny(model__width=16, seed=s), {}) for s in range(2)]          # another shape
    runs += [Run(tiny(optim__name="adam", seed=9), {})]                         # another optimizer
    runs += [Run(tiny(trainer__max_epochs=3, seed=9), {})]                       # another step budget
    groups = plan(runs, "auto", fuse_max=4)
    sizes = sorted(len(g) for g in groups)
    assert sizes == [1, 1, 2, 3, 3]  # six fusable runs in two equal groups of at most 4
    assert all(len({r.cfg.model.width for r in g}) == 1 for g in groups)
    assert [len(g) for g in plan(runs, "off")] == [1] * len(runs)
    assert sum(len(g) for g in plan(runs, "auto", fuse_max=16)) == len(runs)
    # a run with its own checkpoint resumes alone; a group's checkpoint keeps that group together
    alone = runs[0].run_id
    assert [alone] in [[r.run_id for r in g] for g in plan(runs, alone={alone})]
    keep = [runs[1].run_id, runs[4].run_id]
    assert keep in [[r.run_id for r in g] for g in plan(runs, keep=[keep])]


def test_planner_caps_a_group_by_memory(tiny, monkeypatch):
    import framework.planner as planner
    runs = [Run(tiny(seed=s), {}) for s in range(8)]
    per_member = planner.member_bytes(runs[0].cfg)
    monkeypatch.setattr("framework.planner.available_memory", lambda acc: (int(3.5 * per_member / 0.5), "RAM"))
    assert max(len(g) for g in plan(runs, "auto", fuse_max=16)) == 3


def test_fuse_options_are_checked(tmp_path):
    r = cli("run", "double_descent", "--scale", "smoke", "--fuse", "sometimes", "--runs-dir", tmp_path)
    assert r.exit_code == 2 and "--fuse" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    from framework.cli_common import _check_fuse
    from framework.registry import UserError
    with pytest.raises(UserError, match="--fuse-max"):
        _check_fuse("auto", 0)


def test_bench_fused_case_prints_its_ratios(tmp_path):
    out = tmp_path / "benchmarks.md"
    r = repro("bench", "--case", "fused_mlp_16x50x10", "--size", "small", "--record", str(out), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    import re
    fused = float(re.search(r"fused / unfused framework: (\d+\.\d+)", r.stdout).group(1))
    raw = float(re.search(r"fused framework / raw fused loop: (\d+\.\d+)", r.stdout).group(1))
    assert fused > 1.0 and 0.1 < raw < 3.0, r.stdout
    assert "fused / unfused" in out.read_text()


@pytest.mark.parametrize("name,depth,shape,residual", [
    ("mlp", 2, (6,), False), ("mlp", 3, (4,), True), ("linear", 0, (6,), False), ("convnet", 3, (3, 8, 8), False),
    ("cnn5", 0, (3, 8, 8), False), ("resnet18", 0, (3, 8, 8), False), ("vgg", 11, (3, 8, 8), False)])
def test_every_model_in_the_registry_fuses(name, depth, shape, residual, tiny):
    """The fused net's output for each member's rows is that member's own net's output, in training mode (batch
    statistics) and in eval mode (each member's running statistics), and so are the gradients (within 1e-2: a
    VGG-11 with batch norm at batch 8 amplifies the rounding; measured worst 1.9e-3)."""
    from framework.fused_layers import fuse_nets, member_state
    from framework.models import MODELS
    from framework.nets import build_model
    assert name in MODELS.names()
    cfg = tiny(model__name=name, model__depth=depth, model__width=4, model__batch_norm=True,
               model__residual=residual)  # a residual MLP with 4 inputs adds rows to its first fused layer's output
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(build_model(cfg.model, shape, 5))
    fused = fuse_nets(nets)
    x = torch.randn(3 * 8, *shape)
    for mode in ("train", "eval"):
        out = getattr(fused, mode)()(x)
        for k, net in enumerate(nets):
            torch.testing.assert_close(out[8 * k:8 * (k + 1)], getattr(net, mode)()(x[8 * k:8 * (k + 1)]),
                                       rtol=1e-4, atol=1e-5)
    fused.train()(x).pow(2).sum().backward()
    for k, net in enumerate(nets):
        net.train()(x[8 * k:8 * (k + 1)]).pow(2).sum().backward()
        for (pname, p), q in zip(fused.named_parameters(), net.parameters()):
            torch.testing.assert_close(p.grad[k], q.grad, rtol=1e-2, atol=1e-3, msg=lambda m: f"{pname}: {m}")
        # and back: a member's values load into an unfused net of its config
        fresh = build_model(cfg.model, shape, 5)
        fresh.load_state_dict(member_state(fused, k))


def test_a_member_whose_every_batch_is_nan_logs_what_its_lone_run_logs(tiny, tmp_path):
    """One batch per epoch and a step so large the first loss is already inf: the member's epoch has no finite
    batch. Alone, torchmetrics' mean of it is nan; fused, the same nan (it once divided by zero and failed the
    whole group: lr_scaling's batch 512 at lr 5.12)."""
    base = dict(trainer__max_epochs=3, data__n_samples=200, data__batch_size=256, trainer__log_every_n_steps=1)
    cfgs = [tiny(seed=0, optim__lr=0.05, **base), tiny(seed=1, optim__lr=1e30, **base)]
    alone, fused = RunStore(tmp_path / "alone"), RunStore(tmp_path / "fused")
    singles = [train(c, alone) for c in cfgs]
    together = train_group(cfgs, fused)
    assert [s["status"] for s in together] == [s["status"] for s in singles] == ["done", "diverged"]
    for c in cfgs:
        assert_same_run(alone, fused, "test", config_hash(c))


def test_members_with_their_own_batch_order_equal_their_runs_alone(tiny, tmp_path):
    """data.order_seed: one seed, three chains: 0 keeps the seed's order (and the hash the run always had), 1 and
    2 draw their own. Fused, each member sees the batches its lone run sees; the orders differ from each other."""
    from framework.data import order_stream
    base = dict(seed=3, optim__lr=0.1, trainer__max_epochs=3, data__n_samples=400)
    cfgs = [tiny(data__order_seed=k, **base) for k in (0, 1, 2)]
    assert config_hash(cfgs[0]) == config_hash(tiny(**base))
    assert len({order_stream(3, k) for k in (0, 1, 2)} | {3}) == 3 and order_stream(3, 0) == 3
    alone, fused = RunStore(tmp_path / "alone"), RunStore(tmp_path / "fused")
    singles = [train(c, alone) for c in cfgs]
    together = train_group(cfgs, fused)
    for c in cfgs:
        assert_same_run(alone, fused, "test", config_hash(c))
    assert len({round(s["train_loss"], 6) for s in singles}) == 3, "each order is its own draw"
    assert [s["status"] for s in together] == ["done"] * 3
