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


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec


def plugin_key(spec: str) -> str:
    """How a plug-in is known: a file by its absolute path (one file named two ways is one plug-in, imported once),
    a module by its name. REPRO_PLUGINS holds these keys."""
    return str(Path(spec).expanduser().resolve()) if _is_file(spec) else spec


def _module_name(key: str) -> str:
    return f"repro_plugin_{Path(key).stem}" if _is_file(key) else key


def plugins_in_env() -> list[str]:
    return [plugin_key(s.strip()) for s in os.environ.get("REPRO_PLUGINS", "").split(",") if s.strip()]


def add_plugins(specs) -> None:
    """Adds plug-ins to REPRO_PLUGINS (through the environment: `run all`'s children and SLURM array tasks load
    them too), each once."""
    os.environ["REPRO_PLUGINS"] = ",".join(dict.fromkeys([*plugins_in_env(), *map(plugin_key, specs)]))


def _import(key: str):
    if _is_file(key):
        path = Path(key)
        if not path.exists():
            raise FileNotFoundError(f"no file {path}")
        name = _module_name(key)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(key)


def load_plugins() -> list[str]:
    """Import every plug-in once (entry points, then REPRO_PLUGINS); returns what was loaded this call."""
    import experiments  # noqa: F401  (the built-in recipes first: a plug-in's name clashes with them, not they with it)
    import framework.nets  # noqa: F401  (every built-in model, dataset and loss registered)
    found = [(ep.name, ep) for ep in entry_points(group=GROUP)]
    found += [(key, None) for key in plugins_in_env()]
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


def is_recipe_spec(experiment: str) -> bool:
    """A recipe given by where it lives (`path/to/recipe.py`, `...py:Class`, `pkg.module:Class`), not by name."""
    return experiment.endswith(".py") or ":" in experiment or os.sep in experiment


def load_recipe(spec: str) -> str:
    """Imports the recipe `spec` names as a plug-in and returns its name. `path/to/recipe.py` (one recipe in it),
    `path/to/recipe.py:Class` or `pkg.module:Class`; its YAML beside the module. The module joins REPRO_PLUGINS,
    so `repro submit`'s array tasks load it (and its models and datasets) too. A class its module does not
    register is registered here under its `name`."""
    from experiments import RECIPES
    from framework.recipe import Recipe
    where, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    add_plugins([where])
    load_plugins()
    module = sys.modules[_module_name(plugin_key(where))]
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, Recipe) and c is not Recipe and c.__module__ == module.__name__]
    if attr:
        cls = getattr(module, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, Recipe)):
            raise UserError(f"experiment {spec}: {where} has no recipe class {attr!r}; its recipes: "
                            f"{', '.join(c.__name__ for c in classes) or 'none'}")
    elif len(classes) == 1:
        cls = classes[0]
    else:
        raise UserError(f"experiment {spec}: {'no recipe class' if not classes else 'several recipe classes'} in "
                        f"{where}{' (' + ', '.join(c.__name__ for c in classes) + ')' if classes else ''}; name one "
                        f"as {where}:Class")
    name = getattr(cls, "name", "")
    if not name:
        raise UserError(f"experiment {spec}: {cls.__name__} has no `name` (its YAML is <name>.yaml beside it)")
    if name not in RECIPES:
        RECIPES.register(name)(cls)
    elif RECIPES.get(name) is not cls:
        raise UserError(f"experiment {spec}: the name {name!r} of {cls.__name__} is taken (a built-in or another "
                        f"plug-in's recipe); rename it")
    return name
