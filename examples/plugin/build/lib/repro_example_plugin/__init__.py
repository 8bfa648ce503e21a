"""An example repro plug-in: a model (`ring_net`), a dataset (`rings`) and a recipe (`rings_separate`).

Importing this module registers them; repro imports it through the `repro.plugins` entry point (installed) or
`--plugin` / REPRO_PLUGINS (not installed). The recipe's YAML, rings_separate.yaml, sits beside this file.
"""
import math

import numpy as np
import torch
import torch.nn as nn

from experiments import RECIPES
from framework.claims import Definition, Definitions
from framework.datasets import DATASETS, Dataset
from framework.models import MODELS
from framework.recipe import Recipe
from framework.results.measures import loss_reduction
from framework.verdict import above


@MODELS.register("ring_net")
def build_ring_net(cfg, in_shape, n_out):
    """A one-hidden-layer tanh net of cfg.width units."""
    n_in = int(np.prod(in_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, cfg.width), nn.Tanh(), nn.Linear(cfg.width, n_out))


@DATASETS.register("rings")
def rings(cfg, rng) -> Dataset:
    """Two concentric rings in the plane (class 0 inside, 1 outside), radius noise cfg.noise."""
    n = cfg.n_samples
    y = rng.integers(0, 2, size=n)
    radius = 1.0 + y + cfg.noise * rng.standard_normal(n)
    angle = rng.uniform(0, 2 * math.pi, size=n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype(np.float32)
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), 2)


@RECIPES.register("rings_separate")
class RingsSeparate(Recipe):
    name = "rings_separate"
    title = "A wide tanh net separates two rings a narrow one cannot"
    papers = ["an example plug-in"]
    definitions = Definitions(
        Definition("wide_separates", "A 32-unit tanh net fits the rings better than a 1-unit one",
                   quote="a wider hidden layer represents the circular boundary a single unit cannot",
                   paraphrase=True, where="an example plug-in",
                   statistic="training loss reduction, 32 units - 1 unit", criterion=above(0.1),
                   source="convention: a tenth of the starting loss"),
    )

    def measure(self, runs):
        narrow, wide = runs.one(**{"model.width": 1}), runs.one(**{"model.width": 32})
        return [self.definitions["wide_separates"](loss_reduction(wide) - loss_reduction(narrow),
                                                   {"narrow": loss_reduction(narrow), "wide": loss_reduction(wide)})]
