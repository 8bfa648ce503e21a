"""Which of a suite's runs train together as one fused model (framework/fused.py), and which alone.

Runs fuse when everything but their per-member settings is equal (MEMBER_KEYS: seed, data split seed (each
member builds its own splits; their sizes are equal because the split fractions are), optimizer
hyperparameters, schedule, label noise, input corruption, initialisation, dropout rate, L2 penalty, gradient clipping,
early-stop threshold) and their nets have the same structure (runs that stop early fuse with their seeds only); a group holds at most `fuse_max` runs and no more
than a share of the machine's memory. Fusion never enters a run's identity: the plan only decides how the
runs are executed.
"""
from __future__ import annotations

import functools
import json
import math

import torch

from framework.config import DataConfig, ModelConfig, RunConfig, flatten, in_identity_exempt, to_dict
from framework.datasets import input_shape
from framework.fused_layers import FUSED_LAYERS, structure
from framework.module import BYTES_PER_PARAMETER, available_memory
from framework.nets import build_model

FUSE_MODES = ("auto", "off")
FUSE_MAX = 16
MEMORY_SHARE = 0.5  # of the machine's (or GPU's) memory, for one group's weights, optimizer state and activations
MEMBER_KEYS = ("seed", "data.split_seed", "data.order_seed", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.beta1", "optim.beta2", "optim.eps",
               "optim.base_batch_size", "schedule.", "data.label_noise", "data.corruption", "data.condition", "data.noise",
               "data.feature_scale", "data.standardise", "model.init",
               "model.dropout", "loss.l2", "trainer.stop_at_train_acc", "trainer.gradient_clip")


def _member_key(key: str) -> bool:
    return any(key == p or key.startswith(p) for p in MEMBER_KEYS)


def alone_because(cfg: RunConfig) -> str | None:
    """Why this run cannot fuse with others (None: it can)."""
    t = cfg.trainer
    if t.strategy.startswith("ddp") or t.devices not in (1,) or t.num_nodes != 1:
        return "distributed"
    if not t.fuse:
        return "trainer.fuse=false"
    if t.compile:
        return "trainer.compile"
    if _structure(cfg) is None:
        return f"model.name={cfg.model.name} has a layer with no batched version"
    return None


@functools.lru_cache(maxsize=256)
def _structure_of(model_json: str, data_json: str) -> tuple | None:
    in_shape, n_out = input_shape(DataConfig(**json.loads(data_json)))
    with torch.device("meta"):
        net = build_model(ModelConfig(**json.loads(model_json)), tuple(in_shape), int(n_out))
    for m in net.modules():
        if type(m) not in FUSED_LAYERS and any(True for _ in m.parameters(recurse=False)):
            return None
    return structure(net)


def _structure(cfg: RunConfig) -> tuple | None:
    return _structure_of(json.dumps(to_dict(cfg.model), sort_keys=True), json.dumps(to_dict(cfg.data), sort_keys=True))


def fusion_key(cfg: RunConfig) -> str | None:
    """Runs with one key may train as one group; None: the run trains alone."""
    if alone_because(cfg) is not None:
        return None
    # A group computes every member until its last one stops: runs that stop on their own training accuracy fuse
    # only with their other seeds, which stop at about the same step (random_labels fused by label noise took
    # 100 s against 56 s one by one: its true-label runs waited, frozen, for the random-label ones).
    free = (lambda k: k == "seed") if cfg.trainer.stop_at_train_acc > 0 else _member_key
    shared = {k: v for k, v in flatten(to_dict(cfg)).items() if not in_identity_exempt(k) and not free(k)}
    return json.dumps([shared, repr(_structure(cfg))], sort_keys=True, default=str)


def member_bytes(cfg: RunConfig) -> int:
    """A member's memory in a group: weights, gradients and two optimizer moments, and the activations of one
    batch kept for backward (each layer's output, twice for the activation and its gradient)."""
    in_shape, n_out = input_shape(cfg.data)
    with torch.device("meta"):
        net = build_model(cfg.model, tuple(in_shape), int(n_out))
        outputs = []
        hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.numel()))
                 for m in net.modules() if not list(m.children())]
        net.eval()(torch.empty(1, *in_shape))  # eval: batch norm takes one sample
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in net.parameters())
    return params * BYTES_PER_PARAMETER + 2 * 4 * sum(outputs) * cfg.data.batch_size


def group_cap(cfg: RunConfig, fuse_max: int) -> int:
    have, _ = available_memory(cfg.trainer.accelerator)
    return max(1, min(fuse_max, int(MEMORY_SHARE * have // max(1, member_bytes(cfg)))))


def plan(runs: list, fuse: str = "auto", fuse_max: int = FUSE_MAX, keep: list[list[str]] = (),
         alone: set[str] = frozenset()) -> list[list]:
    """Splits `runs` (objects with .cfg and .run_id, in suite order) into groups, in the order of each group's
    first run. `keep`: member lists of groups that left a checkpoint, kept as they were when all their members
    are here; `alone`: run ids that must train alone (a run with its own checkpoint resumes unfused)."""
    if fuse == "off" or fuse_max <= 1:
        return [[r] for r in runs]
    by_id = {r.run_id: r for r in runs}
    groups, placed = [], set()
    for members in keep:
        if len(members) > 1 and all(m in by_id and m not in placed and m not in alone for m in members):
            groups.append([by_id[m] for m in members])
            placed.update(members)
    buckets: dict[str, list] = {}
    for r in runs:
        if r.run_id in placed:
            continue
        key = None if r.run_id in alone else fusion_key(r.cfg)
        if key is None:
            groups.append([r])
        else:
            buckets.setdefault(key, []).append(r)
    for bucket in buckets.values():
        cap = group_cap(bucket[0].cfg, fuse_max)
        n = math.ceil(len(bucket) / cap)
        size = math.ceil(len(bucket) / n)  # equal groups: a step costs about the size of its group
        groups += [bucket[i:i + size] for i in range(0, len(bucket), size)]
    order = {r.run_id: i for i, r in enumerate(runs)}
    return sorted(groups, key=lambda g: order[g[0].run_id])


def plan_suite(runs: list, store, fuse: str = "auto", fuse_max: int = FUSE_MAX, force: bool = False) -> list[list]:
    """The plan of a suite's runs against its store: finished runs go alone (they are reused, not trained), a
    run with its own checkpoint resumes alone, a preempted group resumes as the same group."""
    if not runs:
        return []
    exp = runs[0].cfg.experiment
    finished = set() if force else {r.run_id for r in runs if store.is_finished(exp, r.run_id)}
    own_checkpoint = {r.run_id for r in runs if store.checkpoint(exp, r.run_id).exists()}
    return plan(runs, fuse, fuse_max, keep=store.saved_groups(exp), alone=finished | own_checkpoint)
