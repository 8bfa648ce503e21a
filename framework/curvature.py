"""Curvature: Hessian-vector products by double backpropagation (Pearlmutter 1994) and the top Hessian eigenvalue
by power iteration on them, the sharpness of Cohen et al. 2021 and the lambda_max of the step-size bound
eta < 2 / lambda_max (LeCun et al. 1998, Sec. 5)."""
from __future__ import annotations

import torch
from torch import nn


def loss_and_grads(net: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor):
    """The loss and its gradients with a graph kept, so that Hessian-vector products can be taken from them."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = loss_fn(net(x), y)
    return loss, params, torch.autograd.grad(loss, params, create_graph=True)


def hvp(params, grads, vector: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v: the gradient of (grad . v), with the first backward's graph kept for the next product."""
    return list(torch.autograd.grad(grads, params, grad_outputs=vector, retain_graph=True))


def top_eigenvalue(net: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, iters: int = 20,
                   start: list[torch.Tensor] | None = None, generator: torch.Generator | None = None,
                   tol: float = 1e-4) -> tuple[float, list[torch.Tensor]]:
    """The Hessian eigenvalue of largest magnitude (its Rayleigh quotient, signed) and its unit eigenvector, by at
    most `iters` power iterations, stopping once the estimate changes by less than tol (relative). `start`
    warm-starts from an earlier vector (a probe every few steps converges in a few iterations)."""
    _, params, grads = loss_and_grads(net, loss_fn, x, y)
    if start is None:
        start = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    v = _normalised(start)
    estimate = float("nan")
    for _ in range(iters):
        hv = hvp(params, grads, v)
        new = float(sum((a * b).sum() for a, b in zip(v, hv)))
        v = _normalised([h.detach() for h in hv])
        if abs(new - estimate) <= tol * abs(new):
            return new, v
        estimate = new
    return estimate, v


def _normalised(vs: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(sum(v.pow(2).sum() for v in vs))
    return [v / norm for v in vs] if float(norm) > 0 else vs


def full_hessian(net: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The whole (P, P) Hessian, for checks on tiny nets only."""
    from torch.func import functional_call, hessian
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters()])

    def f(theta):
        parts, i = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = theta[i:i + shape.numel()].reshape(shape)
            i += shape.numel()
        return loss_fn(functional_call(net, parts, (x,)), y)
    return hessian(f)(flat)
