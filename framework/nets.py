"""A run's net from its model config: the registered model (framework/models.py: MLPs; framework/convnets.py: conv
nets, both registered on import here) with the registered initialisation applied to every weight layer."""
from __future__ import annotations

from torch import nn

from framework import convnets  # noqa: F401  (registers the conv nets in MODELS)
from framework.models import INITS, MODELS, linear_layers


def build_model(cfg, in_shape: tuple[int, ...], n_out: int) -> nn.Module:
    """cfg: ModelConfig; in_shape: one sample's shape. Builds the named model and applies the named
    initialisation to every weight layer."""
    model = MODELS.get(cfg.name, "model.name")(cfg, tuple(in_shape), n_out)
    init = INITS.get(cfg.init, "model.init")
    for layer in linear_layers(model):
        init(layer, cfg)
    return model
