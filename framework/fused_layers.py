"""Fused layers: K runs' nets of one architecture as one net, each layer's parameters stacked (dim 0).

The fused net is the members' net with every layer that holds parameters replaced by a batched layer whose
parameters stack the K members' (dim 0); activations carry the K members' batches one after another along the
batch dimension (K * B rows), so every layer without parameters (activations, pooling, flatten, residual adds)
runs unchanged. Linear layers are batched matmuls, convolutions grouped convolutions (as in HFTA, Wang et al.
2021), batch norm one norm over K x C channels (each member keeps its own running statistics), dropout draws each
member's masks from its lone run's random stream (on the CPU; see FusedDropout). Batched layers were measured
against torch.func's vmap over `stack_module_state` (16 x 50-layer width-10 MLPs, batch 128, one CPU thread):
17 ms a step against 25 ms.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from framework.registry import UserError


class FusedLinear(nn.Module):
    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.k = len(layers)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))  # (K, out, in)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers])) if layers[0].bias is not None \
            else None

    def forward(self, x):
        # computed feature-major, W @ h^T per member, and returned as a (K, B, out) view of the (K, out, B) result:
        # on one CPU thread the weight gradient of h @ W^T runs as a batched matrix-vector product that takes 8x
        # longer for one output (the Wilson construction's 3003 -> 1 layer: 28 ms against 3.2 ms a step), and
        # copying each layer's output back to member-stacked rows cost a 16 x 50-layer width-10 MLP a third of
        # its step (14 ms against 9 ms forward and backward). Input: (K * B, in) rows or (K, B, in) stacked (the
        # output of a fused layer before it); the fused net's output is made rows again (fuse_nets).
        ht = x.transpose(1, 2) if x.dim() == 3 else x.reshape(self.k, -1, x.shape[-1]).transpose(1, 2)
        out = torch.bmm(self.weight, ht) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(2), self.weight, ht)
        return out.transpose(1, 2)


def _to_channels(x: torch.Tensor, k: int) -> torch.Tensor:
    """(K * B, C, ...) member-stacked rows -> (B, K * C, ...) member-stacked channels."""
    b = x.shape[0] // k
    return x.reshape(k, b, *x.shape[1:]).transpose(0, 1).reshape(b, k * x.shape[1], *x.shape[2:])


def _to_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    b, c = x.shape[0], x.shape[1] // k
    return x.reshape(b, k, c, *x.shape[2:]).transpose(0, 1).reshape(k * b, c, *x.shape[2:])


class FusedConv2d(nn.Module):
    def __init__(self, layers: list[nn.Conv2d]):
        super().__init__()
        m = layers[0]
        self.k, self.stride, self.padding, self.dilation, self.groups = len(layers), m.stride, m.padding, \
            m.dilation, m.groups
        self.weight = nn.Parameter(torch.stack([c.weight.detach() for c in layers]))  # (K, out, in/groups, kh, kw)
        self.bias = nn.Parameter(torch.stack([c.bias.detach() for c in layers])) if m.bias is not None else None

    def forward(self, x):
        w = self.weight.reshape(-1, *self.weight.shape[2:])
        out = F.conv2d(_to_channels(x, self.k), w, None if self.bias is None else self.bias.reshape(-1),
                       self.stride, self.padding, self.dilation, self.groups * self.k)
        return _to_rows(out, self.k)


class FusedBatchNorm(nn.Module):
    """Batch norm over K x C channels; `active` (K,) keeps a frozen member's running statistics as they are."""

    def __init__(self, layers: list[nn.modules.batchnorm._BatchNorm]):
        super().__init__()
        m = layers[0]
        if m.momentum is None or not m.track_running_stats or not m.affine:
            raise UserError("fusion: batch norm without momentum, running statistics or affine parameters")
        self.k, self.eps, self.momentum = len(layers), m.eps, m.momentum
        self.weight = nn.Parameter(torch.stack([b.weight.detach() for b in layers]))
        self.bias = nn.Parameter(torch.stack([b.bias.detach() for b in layers]))
        self.register_buffer("running_mean", torch.stack([b.running_mean for b in layers]))
        self.register_buffer("running_var", torch.stack([b.running_var for b in layers]))
        self.register_buffer("num_batches_tracked", torch.stack([b.num_batches_tracked for b in layers]))
        self.register_buffer("active", torch.ones(self.k, dtype=torch.bool))

    def forward(self, x):
        frozen = self.training and not bool(self.active.all())
        # with a frozen member, the norm updates copies, and only the active members' entries are kept (the
        # buffers themselves must not change in place while autograd holds them)
        mean, var = (self.running_mean.clone(), self.running_var.clone()) if frozen else \
            (self.running_mean, self.running_var)
        # a fused linear layer's (K, B, C) output goes in as (B, K x C), the layout of its lone runs' (B, C): the
        # norm over (1, K x C, B), with no copy, rounds differently, and a 50-layer batch-norm net is chaotic
        # enough to carry that to a 10% different loss reduction at smoke scale
        stacked = x.dim() == 3
        h = x.transpose(0, 1).reshape(x.shape[1], -1) if stacked else _to_channels(x, self.k)
        out = F.batch_norm(h, mean.view(-1), var.view(-1), self.weight.reshape(-1),
                           self.bias.reshape(-1), self.training, self.momentum, self.eps)
        if self.training:
            self.num_batches_tracked.add_(self.active.long())
            if frozen:
                keep = self.active[:, None]
                self.running_mean.copy_(torch.where(keep, mean, self.running_mean))
                self.running_var.copy_(torch.where(keep, var, self.running_var))
        return out.view(x.shape[1], self.k, -1).transpose(0, 1) if stacked else _to_rows(out, self.k)


class FusedDropout(nn.Module):
    """Each member's own rate and mask. On the CPU each member draws its mask from its own generator, started
    where its lone run's global generator stands when training starts (`generators`, shared by all of a member's
    dropout layers, which draw in the lone run's order), with the op nn.Dropout uses (bernoulli_ of 1 - p): the
    masks, and so the run, are its lone run's bit for bit. Elsewhere (CUDA's dropout is a fused kernel with its
    own stream) the masks are drawn together: each member's are as random, not its lone run's."""

    def __init__(self, layers: list[nn.Dropout]):
        super().__init__()
        self.k = len(layers)
        self.register_buffer("p", torch.tensor([m.p for m in layers]), persistent=False)
        self.generators: list[torch.Generator] | None = None  # each member's, shared by its layers: FusedModule's

    def forward(self, x):
        if not self.training:
            return x
        stacked = x.dim() == 3  # (K, B, F), a fused linear layer's output; else (K * B, ...) rows
        rows = x if stacked else x.reshape(self.k, -1, *x.shape[1:])
        if self.generators is None or x.device.type != "cpu":
            p = self.p.view(-1, *([1] * (rows.dim() - 1)))
            return (rows * (torch.rand_like(rows) >= p) / (1 - p)).reshape(x.shape)
        out = []
        for i, (p, g) in enumerate(zip(self.p.tolist(), self.generators)):
            if p == 1:
                out.append(torch.zeros(rows[i].shape, dtype=x.dtype))
            else:  # torch's dropout on the CPU: input * (bernoulli(1 - p) / (1 - p)), drawn in the lone run's
                # row-major order whatever the layout of this member's slice
                mask = torch.empty(rows[i].shape, dtype=x.dtype).bernoulli_(1 - p, generator=g).div_(1 - p)
                out.append(rows[i] * mask)
        return torch.stack(out) if stacked else torch.cat(out)


FUSED_LAYERS = {nn.Linear: FusedLinear, nn.Conv2d: FusedConv2d, nn.BatchNorm1d: FusedBatchNorm,
                nn.BatchNorm2d: FusedBatchNorm, nn.Dropout: FusedDropout}


def structure(net: nn.Module) -> tuple:
    """What must be equal for nets to fuse: every submodule's name and type, and every parameter's shape."""
    return (tuple((name, type(m).__name__) for name, m in net.named_modules()),
            tuple((name, tuple(p.shape)) for name, p in net.named_parameters()))


def fuse_nets(nets: list[nn.Module]) -> nn.Module:
    """One net over K members (see the module docstring); the members' values are copied, not shared."""
    if len({structure(n) for n in nets}) > 1:
        raise ValueError("fusion: the members' nets differ in structure")
    fused = copy.deepcopy(nets[0])
    members = [dict(n.named_modules()) for n in nets]
    for name, module in list(fused.named_modules()):
        kind = FUSED_LAYERS.get(type(module))
        if kind is None:
            if any(True for _ in module.parameters(recurse=False)):
                raise UserError(f"fusion: no batched version of {type(module).__name__}; run with --fuse off")
            continue
        new = kind([m[name] for m in members])
        parent, _, leaf = name.rpartition(".")
        setattr(fused.get_submodule(parent) if parent else fused, leaf, new)
    fused.register_forward_hook(_rows_out)
    return fused


def _rows_out(module, inputs, out):
    """The fused net's output as (K * B, ...) rows, as the loss and metrics take it: a net ending in a linear layer
    ends (K, B, out) stacked (FusedLinear)."""
    return out.reshape(-1, out.shape[-1]) if out.dim() == 3 else out


def member_state(fused: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Member k's entries of the fused net's state, under an unfused net's names (for load_state_dict)."""
    state = {}
    for name, t in fused.state_dict().items():
        if name.endswith(".active"):  # the group's bookkeeping, not a net's state
            continue
        state[name] = t[k].clone()
    return state
