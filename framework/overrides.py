"""A run config from what the user wrote: dotted overrides (`model.depth=20`, YAML values), each checked against the
field's declared type, then the whole config validated, every error one line naming the key."""
from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import typing
from typing import Any

import yaml

from framework.config import PRECISIONS, REGISTRY_FIELDS, SAFE_NAME, TRACKING_MODES, RunConfig, flatten, to_dict
from framework.registry import UserError, suggest


def _field_types(obj) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check (and lightly convert) an override's value against the field's declared type."""
    def bad():
        name = getattr(typ, "__name__", str(typ))
        return UserError(f"{key}: expected {name}, got {value!r} ({type(value).__name__})")

    if typ is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad()
    if typ is str:
        if isinstance(value, str):
            return value
        raise bad()
    if typing.get_origin(typ) is list:
        (item,) = typing.get_args(typ)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise bad()
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    raise bad()


def valid_keys(obj=None, prefix: str = "") -> list[str]:
    obj = obj if obj is not None else RunConfig()
    keys = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            keys += valid_keys(v, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def set_dotted(cfg: RunConfig, key: str, value: Any) -> None:
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        if part not in names:
            here = ".".join(parts[:i])
            siblings = [f"{here}.{n}" if here else n for n in names]
            raise UserError(
                f"unknown key '{key}'{suggest(key, valid_keys())}; "
                f"valid keys{' under ' + repr(here) if here else ''}: {', '.join(siblings)}")
        if i == len(parts) - 1:
            current = getattr(obj, part)
            if dataclasses.is_dataclass(current):
                if not isinstance(value, dict):
                    raise UserError(f"{key}: is a section; set one of its keys, e.g. {key}.{dataclasses.fields(current)[0].name}=...")
                for k, v in value.items():
                    set_dotted(cfg, f"{key}.{k}", v)
                return
            setattr(obj, part, _coerce(key, value, _field_types(obj)[part]))
            return
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise UserError(f"unknown key '{key}': '{'.'.join(parts[:i + 1])}' is a value, not a section")


def parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    out = {}
    for arg in args:
        if "=" not in arg:
            raise UserError(f"override '{arg}' is not of the form key=value (e.g. model.depth=20)")
        key, text = arg.split("=", 1)
        out[key.strip()] = parse_value(text)
    return out


def apply(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    cfg = copy.deepcopy(cfg)
    for key, value in flatten(overrides).items():
        set_dotted(cfg, key, value)
    validate(cfg)
    return cfg


def from_dict(d: dict[str, Any]) -> RunConfig:
    cfg = RunConfig()
    for key, value in flatten(d).items():
        set_dotted(cfg, key, value)
    return cfg


def validate(cfg: RunConfig) -> None:
    flat = flatten(to_dict(cfg))
    for key, (module, attr) in REGISTRY_FIELDS.items():
        getattr(importlib.import_module(module), attr).check(flat[key], key)
    if cfg.tracking.mode not in TRACKING_MODES:
        raise UserError(f"tracking.mode: unknown mode '{cfg.tracking.mode}'{suggest(cfg.tracking.mode, TRACKING_MODES)}; "
                        f"choices: {', '.join(TRACKING_MODES)}")
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key}: must be a finite number, got {value!r}")
    if cfg.trainer.precision not in PRECISIONS:
        raise UserError(f"trainer.precision: unknown precision {cfg.trainer.precision!r}"
                        f"{suggest(cfg.trainer.precision, PRECISIONS)}; choices: {', '.join(PRECISIONS)}")
    t, d, o = cfg.trainer, cfg.data, cfg.optim
    world = t.devices * t.num_nodes if t.strategy.startswith("ddp") and t.devices > 0 else 1
    checks = [
        ("experiment", bool(SAFE_NAME.fullmatch(cfg.experiment)),
         "must be a plain folder name (letters, digits, '_', '-', '.'; not starting with '.'): it names the run's "
         "folder inside the store"),
        ("seed", 0 <= cfg.seed < 2**32, "must be in [0, 2**32)"),
        ("model.depth", cfg.model.depth >= 0, "must be >= 0"),
        ("model.width", cfg.model.width >= 1, "must be >= 1"),
        ("model.dropout", 0.0 <= cfg.model.dropout < 1.0, "must be in [0, 1)"),
        ("data.batch_size", d.batch_size >= 1, "must be >= 1"),
        ("data.order_seed", d.order_seed >= 0, "must be >= 0"),
        ("data.val_fraction", 0.0 <= d.val_fraction < 1.0, "must be in [0, 1)"),
        ("data.test_fraction", 0.0 < d.test_fraction < 1.0, "must be in (0, 1)"),
        ("data.test_fraction", d.val_fraction + d.test_fraction < 1.0,
         f"plus data.val_fraction ({d.val_fraction}) must be < 1, leaving training data"),
        ("data.n_train", d.n_train >= 0, "must be >= 0 (0: every training sample)"),
        ("data.n_samples", d.n_samples >= 1, "must be >= 1"),
        ("data.label_noise", 0.0 <= d.label_noise <= 1.0, "must be in [0, 1]"),
        ("data.crop_padding", d.crop_padding >= 0, "must be >= 0"),
        ("data.positive_fraction", 0.0 < d.positive_fraction < 1.0, "must be in (0, 1)"),
        ("optim.lr", o.lr > 0, "must be > 0"),
        ("optim.weight_decay", o.weight_decay >= 0, "must be >= 0"),
        ("optim.base_batch_size", o.base_batch_size >= 0, "must be >= 0 (0: no linear scaling)"),
        ("optim.momentum", 0.0 <= o.momentum < 1.0, "must be in [0, 1)"),
        ("optim.eps", o.eps > 0, "must be > 0"),
        ("trainer.max_epochs", t.max_epochs >= 1 or t.max_steps > 0, "must be >= 1 (or set trainer.max_steps)"),
        ("trainer.devices", t.devices >= 1 or t.devices == -1, "must be >= 1 (or -1: every device)"),
        ("trainer.num_nodes", t.num_nodes >= 1, "must be >= 1"),
        ("trainer.log_every_n_steps", t.log_every_n_steps >= 1, "must be >= 1"),
        ("trainer.val_every_n_epochs", t.val_every_n_epochs >= 1, "must be >= 1"),
        ("trainer.threads", t.threads >= 0, "must be >= 0 (0: automatic)"),
        ("data.batch_size", d.batch_size % world == 0,
         f"must be divisible by the {world} DDP processes (trainer.devices x trainer.num_nodes): each takes an "
         f"equal share of every batch"),
        ("diagnostics.every_n_steps", cfg.diagnostics.every_n_steps >= 1, "must be >= 1"),
        ("diagnostics.probe_every", cfg.diagnostics.probe_every >= 0, "must be >= 0 (0: no probes)"),
        ("diagnostics.probe_samples", cfg.diagnostics.probe_samples >= 0, "must be >= 0 (0: every training sample)"),
        ("diagnostics.power_iters", cfg.diagnostics.power_iters >= 1, "must be >= 1"),
        ("diagnostics.target_loss", cfg.diagnostics.target_loss >= 0, "must be >= 0 (0: off)"),
        ("diagnostics.variance_batches", all(b >= 1 for b in cfg.diagnostics.variance_batches),
         "must be batch sizes >= 1"),
        ("diagnostics.probe_every", cfg.diagnostics.probe_every > 0 or not (cfg.diagnostics.noise_scale or
                                    cfg.diagnostics.sharpness), "must be > 0 for noise_scale or sharpness probes"),
        ("diagnostics.reparam_scale", cfg.diagnostics.reparam_scale == 0 or (
            cfg.diagnostics.reparam_scale > 0 and cfg.model.name == "mlp" and cfg.model.activation == "relu" and
            not cfg.model.batch_norm and not cfg.model.residual and cfg.model.depth >= 1),
         "must be 0, or > 0 on a ReLU MLP without batch norm or skips (a rescaling that keeps the function)"),
        ("data.condition", d.condition >= 1.0, "must be >= 1"),
        ("data.feature_scale", d.feature_scale >= 1.0, "must be >= 1 (1: features as they are)"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise UserError(f"{key}: {why}, got {flat[key]!r}")
