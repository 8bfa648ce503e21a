"""A user's own models, datasets, losses, optimizers and recipes, without editing this package.

A plug-in is a Python module that registers what it adds in the framework's registries when imported
(`framework.models.MODELS`, `framework.datasets.DATASETS`, `experiments.RECIPES`, ...). Two ways in:
- an installed package names it in the `repro.plugins` entry-point group (pyproject:
  `[project.entry-points."repro.plugins"] mine = "my_package.repro_plugin"`);
- `repro --plugin MODULE_OR_FILE ...` or REPRO_PLUGINS=a,b (module names or paths to .py files) for code that is
  not installed. `--plugin` sets REPRO_PLUGINS, so `run all`'s children and `repro submit`'s array tasks (sbatch
  exports the environment) load the same plug-ins.
A plug-in that fails to import, or registers a name that is taken (a built-in's), stops the command with one line
naming the plug-in (exit 2). A plug-in recipe's YAML may sit beside its module (framework.recipe).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from framework.registry import UserError

GROUP = "repro.plugins"
_loaded: set[str] = set()


def _import(spec: str):
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"no file {path}")
        name = f"repro_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def load_plugins() -> list[str]:
    """Import every plug-in once (entry points, then REPRO_PLUGINS); returns what was loaded this call."""
    import experiments  # noqa: F401  (the built-in recipes first: a plug-in's name clashes with them, not they with it)
    import framework.nets  # noqa: F401  (every built-in model, dataset and loss registered)
    found = [(ep.name, ep) for ep in entry_points(group=GROUP)]
    found += [(s.strip(), None) for s in os.environ.get("REPRO_PLUGINS", "").split(",") if s.strip()]
    loaded = []
    for name, ep in found:
        if name in _loaded:
            continue
        _loaded.add(name)
        try:
            target = ep.load() if ep is not None else _import(name)
            if callable(target):  # an entry point may name a function that registers, not a module
                target()
        except ValueError as e:  # Registry.register: a name registered twice
            raise UserError(f"plugin {name}: {e} (a built-in or another plug-in has that name; rename yours)") from None
        except Exception as e:  # noqa: BLE001 - whatever a plug-in raises on import, one line naming it
            raise UserError(f"plugin {name}: failed to load: {type(e).__name__}: {e}") from None
        loaded.append(name)
    return loaded
