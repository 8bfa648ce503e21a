"""A recipe's grid: its YAML (run, grid, scales) expanded into runs, every grid point at every seed.

    run:    {data: {...}, model: {...}, ...}        # nested or dotted keys of RunConfig
    grid:   {model.depth: [2, 10, 50],               # a list sweeps one key
             arch: {plain: {}, residual: {model.residual: true}}}   # a map names bundles of overrides
    scales: {smoke: {seeds: 2, run: {...}, grid: {...}}, cpu: {seeds: 5}}
    default_scale: cpu

Seeds are the framework's axis, never the grid's: each scale declares how many it runs (`seeds`, default
DEFAULT_SEEDS), `--seeds N --seed-base B` overrides both, and every grid point runs at seeds B ... B+N-1. Each seed
draws its own data (data.split_seed = seed: the split, test set, label-noise draw and synthetic data), and all the
runs of one seed share it, so that a claim comparing runs compares them on one draw (paired) while its interval
over seeds includes the data-sampling variance (Bouthillier et al. 2021).
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.config import SAFE_NAME, RunConfig, config_hash, flatten
from framework.datasets import training_size
from framework.module import check_model_size
from framework.overrides import apply, parse_overrides
from framework.registry import UserError, suggest

DEFAULT_SEEDS = 10  # a scale that does not say how many seeds it runs
MAX_RUNS = 5_000   # a suite with more runs than this is expanded only when confirmed (--yes): a typo'd grid
                   # (1000 x 1000 values) took ~50 minutes and 1.3 GB to expand before anything trained


@dataclass
class Run:
    cfg: RunConfig
    axes: dict[str, Any]

    @property
    def run_id(self) -> str:
        return config_hash(self.cfg)


def _axis_label(key: str, value: Any) -> str:
    return f"{key.split('.')[-1]}={value}"


def expand(name: str, spec: dict, scale: str, overrides: list[str] | dict, source: Path | str = "",
           seeds: int | None = None, seed_base: int = 0) -> list[Run]:
    """The suite's runs: every grid point at every seed. Precedence, lowest first: the YAML's run, the scale's run,
    a grid value or bundle, and what the user typed (a typed key pins a swept axis to that value and overrides
    every bundle that sets it). Seeds: `seeds` (else the scale's, else DEFAULT_SEEDS) from `seed_base` on."""
    where = f"{source}: " if source else ""
    scales = spec.get("scales") or {}
    if not isinstance(scales, dict):
        raise UserError(f"{where}scales: expected a map of scale names, got {scales!r}")
    if scale not in scales:
        raise UserError(f"unknown scale '{scale}' for {name}{suggest(scale, scales)}; choices: {', '.join(scales)}")
    if not SAFE_NAME.fullmatch(str(scale)):  # it names reports/<experiment>/<scale>/ and appears in the HTML
        raise UserError(f"{where}scales.{scale}: a scale's name must be a plain folder name (letters, digits, '_', "
                        f"'-', '.')")
    scale_spec = scales[scale] or {}
    if not isinstance(scale_spec, dict):
        raise UserError(f"{where}scales.{scale}: expected a map (seeds, run, grid), got {scale_spec!r}")
    seed_list = _seeds(scale_spec.get("seeds", DEFAULT_SEEDS) if seeds is None else seeds, seed_base,
                       f"{where}scales.{scale}.seeds" if seeds is None else "--seeds")
    base = {**flatten(spec.get("run") or {}), **flatten(scale_spec.get("run") or {})}
    swap = _data_swap(scale_spec.get("data_swap"), f"{where}scales.{scale}.data_swap")
    grids = _grids(spec.get("grid") or {}, scale_spec.get("grid"))
    typed: dict[str, Any] = {}
    items = (overrides if isinstance(overrides, dict) else parse_overrides(overrides)).items()
    for key, value in items:
        if key == "seed" or key == "grid.seed":
            raise UserError(f"{key}: seeds are set with --seeds N --seed-base B (seeds B ... B+N-1), not as a key")
        if key.startswith("grid."):           # grid.model.depth=[2,3] replaces an axis
            axis = key[len("grid."):]
            owners = [g for g in grids if axis in g]
            if not owners:
                known = sorted({a for g in grids for a in g})
                raise UserError(f"unknown grid axis '{axis}'{suggest(axis, known)}; axes: {', '.join(known)}")
            for g in owners:
                g[axis] = value if isinstance(value, (list, dict)) else [value]
        else:
            for g in grids:                    # pinning a swept key sweeps just that value
                if key in g and not isinstance(g[key], dict):
                    g[key] = [value]
            typed[key] = value
    base_cfg = apply(RunConfig(), {**base, "experiment": name})
    if "data.split_seed" in typed:
        raise UserError("data.split_seed: each seed draws its own data (data.split_seed = seed); --seed-base B "
                        "draws other data")
    apply(base_cfg, typed)  # a bad typed key fails here, named, before any grid is expanded

    count = len(seed_list) * sum(math.prod(len(v) if isinstance(v, (list, dict)) and v else 1 for v in g.values())
                                 for g in grids)
    if count > MAX_RUNS and os.environ.get("REPRO_YES") != "1":
        raise UserError(f"{name} [{scale}] would create {count:,} runs ({len(seed_list)} seeds x the grid's points); "
                        f"more than {MAX_RUNS:,} needs --yes (expanding them alone takes minutes and memory)")
    combos = []
    for grid in grids:
        axes = []
        for axis, values in grid.items():
            if axis == "seed":
                raise UserError(f"{where}grid.seed: a recipe never lists seeds; each scale declares how many it "
                                f"runs (scales.<name>.seeds) and the framework adds the axis")
            if isinstance(values, dict) and values:
                for label, bundle in values.items():
                    if bundle is not None and not isinstance(bundle, dict):
                        raise UserError(f"{where}grid.{axis}.{label}: expected a map of overrides, got {bundle!r}")
                axes.append([(axis, label, flatten(bundle or {}), True) for label, bundle in values.items()])
            elif isinstance(values, list) and values:
                axes.append([(axis, v, {axis: v}, False) for v in values])
            else:
                raise UserError(f"{where}grid.{axis}: expected a non-empty list of values or a non-empty map of "
                                f"named overrides, got {values!r}")
        combos += list(itertools.product(*axes, [("seed", s, {"seed": s}, False) for s in seed_list]))
    runs, seen = [], set()
    if spec.get("data_per_seed", True) is not True:
        raise UserError(f"{where}data_per_seed: every seed draws its own data now (data.split_seed = seed); remove "
                        f"the key")
    for combo in combos:
        changes, labels, axis_values = {}, [], {}
        for axis, value, bundle, named in combo:
            changes.update(bundle)
            if axis == "seed":
                changes["data.split_seed"] = value
            axis_values[axis] = value
            if axis != "seed":
                labels.append(str(value) if named else _axis_label(axis, value))
        if swap:  # the scale's dataset swap, between the grid and what the user typed
            grid_cfg = apply(base_cfg, changes)
            if grid_cfg.data.name in swap:
                changes = {**changes, **_swapped(grid_cfg.data, swap[grid_cfg.data.name])}
        cfg = apply(base_cfg, {**changes, **typed, "data.split_seed": changes["data.split_seed"],
                               "variant": "_".join(labels) or "default"})
        run = Run(cfg, axis_values)
        if run.run_id not in seen:
            check_model_size(cfg)
            seen.add(run.run_id)
            runs.append(run)
    return runs


def _data_swap(swap, where: str) -> dict:
    """A scale's `data_swap: {digits: {name: mnist, n_train: same}}`: every run whose dataset is the key gets these
    data settings instead (`n_train: same`: as many training samples as the run drew from the dataset it replaces),
    so a scale can run a recipe's protocol on another dataset without restating its grid."""
    if swap is None:
        return {}
    if not isinstance(swap, dict) or not all(isinstance(v, dict) and v for v in swap.values()):
        raise UserError(f"{where}: expected a map of dataset name -> data settings, got {swap!r}")
    return swap


def _swapped(data, settings: dict) -> dict:
    return {f"data.{k}": training_size(data) if v == "same" else v for k, v in settings.items()}


def _seeds(count, base, key: str) -> list[int]:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"{key}: expected a whole number of seeds >= 1, got {count!r}")
    if isinstance(base, bool) or not isinstance(base, int) or base < 0 or base + count > 2 ** 32:
        raise UserError(f"--seed-base: expected a whole number >= 0 with base + seeds <= 2**32, got {base!r}")
    return list(range(base, base + count))


def _grids(grid, scale_grid) -> list[dict]:
    """A grid is a map of axes, or a list of such maps whose runs are joined (sub-grids with their own axes).
    A scale's grid replaces a list grid whole, and a map grid axis by axis."""
    if isinstance(grid, list) or isinstance(scale_grid, list):
        chosen = scale_grid if scale_grid is not None else grid
        return [dict(g) for g in (chosen if isinstance(chosen, list) else [chosen])]
    return [{**grid, **(scale_grid or {})}]
