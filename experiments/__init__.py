"""Recipes, one module per phenomenon; each registers itself in RECIPES under its experiment name."""
from framework.registry import Registry

RECIPES = Registry("experiment")

from experiments import adam_vs_sgd, double_descent, edge_of_stability, gradient_noise, implicit_regularisation, initialisation, lr_scaling, random_labels, regularisation, sgd_temperature, step_size, vanishing_gradients  # noqa: E402,F401,I001
