"""Fused training: K runs of one architecture trained as one model, each still its own run.

The fused net is the members' net with every layer that holds parameters replaced by a batched layer whose
parameters stack the K members' (dim 0); activations carry the K members' batches one after another along the
batch dimension (K * B rows), so every layer without parameters (activations, pooling, flatten, residual adds)
runs unchanged. Linear layers are batched matmuls, convolutions grouped convolutions (as in HFTA, Wang et al.
2021), batch norm one norm over K x C channels (each member keeps its own running statistics), dropout draws each
member's masks from its lone run's random stream (on the CPU; see FusedDropout). Batched layers were measured
against torch.func's vmap over `stack_module_state` (16 x 50-layer width-10 MLPs, batch 128, one CPU thread):
17 ms a step against 25 ms.

Each member has its own initialisation (its net is built exactly as an unfused run builds it, then stacked), its
own data order and data (its seed, label noise, corruption), its own optimizer hyperparameters and schedule
(framework/fused_optim.py), its own loggers and its own divergence and early stop: a member that stops is
frozen at the step its unfused run would have stopped at, and the group goes on until every member has.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from framework.data import TensorBatches, rank_and_world
from framework.fused_optim import MemberOptimizer
from framework.losses import LOSSES
from framework.optim import effective_lr, lr_factor
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
    import copy
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


class FusedBatches:
    """The members' training (or validation) batches side by side: K loaders of one length and batch size, each
    with its own seed (data order) and tensors (labels, inputs), concatenated into K * B rows."""

    def __init__(self, loaders: list[TensorBatches]):
        shapes = {(len(loader), loader.batch_size) for loader in loaders}
        if len(shapes) > 1:  # the planner fuses only runs whose splits have equal sizes; never pad or cut silently
            raise ValueError(f"fused members' loaders differ in (batches, batch size): {sorted(shapes)}")
        self.loaders = loaders
        self.sampler, self.batch_sampler = self, None
        # members with the same tensors (each builds its own copy of one split) are gathered once, by their
        # indices side by side: 32 gathers and two concatenations a step of 16 members cost about a millisecond
        first = loaders[0]
        self.shared_x = all(_same(b.x, first.x) and not (b.crop or b.flip) for b in loaders)
        self.shared_y = all(_same(b.y, first.y) for b in loaders)

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.set_epoch(epoch)

    @property
    def batches_done(self) -> int:
        return self.loaders[0].batches_done

    @batches_done.setter
    def batches_done(self, value: int) -> None:
        for loader in self.loaders:
            loader.batches_done = value

    def __len__(self) -> int:
        return len(self.loaders[0])

    def state_dict(self) -> dict:
        return self.loaders[0].state_dict()

    def load_state_dict(self, state: dict) -> None:
        for loader in self.loaders:
            loader.load_state_dict(state)

    def __iter__(self):
        first, shared_x, shared_y = self.loaders[0], self.shared_x, self.shared_y
        if shared_x and shared_y:  # one gather of the members' index rows side by side
            plans = [b.epoch_plan() for b in self.loaders]
            orders, start = torch.stack([p[0] for p in plans]), plans[0][3]
            rank, world = rank_and_world()
            for at in range(start, len(first.x), first.batch_size):
                idx = orders[:, at:at + first.batch_size][:, rank::world].reshape(-1)
                yield first.x.index_select(0, idx), first.y.index_select(0, idx)
            return
        for parts in zip(*(b.indices() for b in self.loaders)):
            idx = torch.cat([i for i, _ in parts]) if shared_x or shared_y else None
            taken = None if shared_x and shared_y else [b.take(i, a) for b, (i, a) in zip(self.loaders, parts)]
            yield (first.x.index_select(0, idx) if shared_x else torch.cat([x for x, _ in taken]),
                   first.y.index_select(0, idx) if shared_y else torch.cat([y for _, y in taken]))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))


class FusedDataModule(pl.LightningDataModule):
    """The members' TensorDataModules, their batches fused."""

    def __init__(self, members: list[pl.LightningDataModule]):
        super().__init__()
        self.members = members

    def _attach(self):
        for m in self.members:
            m.trainer = self.trainer

    def train_dataloader(self):
        self._attach()
        return FusedBatches([m.train_dataloader() for m in self.members])

    def val_dataloader(self):
        self._attach()
        return FusedBatches([m.val_dataloader() for m in self.members])


class Member:
    """What the group knows of one member while it trains: its loggers, and when and why it stopped."""

    def __init__(self, module, loggers: list, splits=None):
        self.module, self.loggers = module, loggers  # module: the member's own ReproModule (evaluation)
        self.module_splits = splits
        self.diverged_step: int | None = None
        self.stopped: tuple[int, int] | None = None  # (global step, epochs) when it was frozen

    def state(self) -> dict:
        return {"diverged_step": self.diverged_step, "stopped": self.stopped}

    def load(self, state: dict) -> None:
        self.diverged_step = state.get("diverged_step")
        self.stopped = tuple(state["stopped"]) if state.get("stopped") else None


class FusedModule(pl.LightningModule):
    """K members (their ReproModules, built as unfused runs build them) trained as one Lightning module."""

    def __init__(self, members: list, loggers: list[list], splits: list):
        super().__init__()
        self.k = len(members)
        self.cfgs = [m.cfg for m in members]
        self.cfg = self.cfgs[0]  # what the members share (trainer, diagnostics, model shape)
        self.members = [Member(m, lg, sp) for m, lg, sp in zip(members, loggers, splits)]
        first = members[0]
        self.n_classes, self.steps_per_epoch = first.n_classes, first.steps_per_epoch
        self.net = fuse_nets([m.net for m in members])
        self.loss_fn = LOSSES.get(self.cfgs[0].loss.name, "loss.name")(self.n_classes)
        self.automatic_optimization = False
        self.register_buffer("first_nonfinite", torch.full((self.k,), -1))  # in checkpoints: a resume keeps it
        # the epoch's sums: batch losses, batches, correct predictions, samples (as MeanMetric and accuracy count)
        self.register_buffer("sums", torch.zeros(self.k, 4))
        self._val = torch.zeros(self.k, 3)
        self._stop_after_step: set[int] = set()
        self._factors = [lr_factor(c.schedule, self._total_steps(c), self.steps_per_epoch) for c in self.cfgs]
        self._peak = [effective_lr(c.optim, c.data.batch_size) for c in self.cfgs]
        self._clip = torch.tensor([c.trainer.gradient_clip for c in self.cfgs])
        self._any_clip = bool((self._clip > 0).any())
        self._l2 = torch.tensor([c.loss.l2 for c in self.cfgs]) if any(c.loss.l2 for c in self.cfgs) else None
        # each member's dropout stream, where its lone run's global generator stands after building its net
        dropout = [m for m in self.net.modules() if isinstance(m, FusedDropout)]
        states = [getattr(m, "rng_after_build", None) for m in members]
        self._dropout_generators = [torch.Generator().set_state(s) for s in states] \
            if dropout and all(s is not None for s in states) else []
        for d in dropout:
            d.generators = self._dropout_generators or None

    def _parameters_list(self) -> list[torch.Tensor]:
        if getattr(self, "_params_cache", None) is None:
            self._params_cache = list(self.net.parameters())
        return self._params_cache

    def _total_steps(self, c) -> int:
        return c.trainer.max_steps if c.trainer.max_steps > 0 else self.steps_per_epoch * c.trainer.max_epochs

    @property
    def active(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if m.stopped is None]

    @property
    def member_loggers(self) -> list:
        return [lg for m in self.members for lg in m.loggers]

    def forward(self, x):
        return self.net(x)

    def _per_member(self, out, y):
        # each member's mean of the unreduced loss: what its lone run's mean-reduced loss computes (torch.func's
        # vmap over the loss was measured at ~1.5 ms a step, through cross-entropy's Python decomposition)
        return self.loss_fn(out, y, reduction="none").reshape(self.k, -1).mean(1)

    def _correct(self, out, y):
        b = out.shape[0] // self.k
        if not self.n_classes:
            return torch.zeros(self.k, device=out.device)
        return (out.argmax(1) == y).reshape(self.k, b).sum(1).float()

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        losses = self._per_member(out, y)
        detached = losses.detach()
        step = self.global_step
        first = self.first_nonfinite  # in place: assigning a registered buffer goes through nn.Module's slow setattr
        first.copy_(torch.where(torch.isfinite(detached) | (first >= 0), first, step))
        optimizer = self.optimizers()
        lrs = [0.0 if m.stopped is not None else self._peak[i] * self._factors[i](step)
               for i, m in enumerate(self.members)]
        if (step + 1) % self.trainer.log_every_n_steps == 0:
            values = detached.tolist()
            for i in self.active:
                for logger in self.members[i].loggers:
                    logger.log_metrics({"train/loss": values[i], "lr": lrs[i], "epoch": self.current_epoch}, step=step)
            self._check_divergence(after_step=True)
        optimizer.optimizer.set_lr(lrs)
        for p in self._parameters_list():  # torch's zero_grad(set_to_none) took 0.7 ms a step of 102 parameters
            p.grad = None
        if self._l2 is not None:  # each member's own 1/2 l2 ||theta||^2, as its lone run adds it
            l2 = self._l2.to(losses.device)
            losses = losses + 0.5 * l2 * sum(p.reshape(self.k, -1).pow(2).sum(1) for p in self.net.parameters())
        self.manual_backward(losses.sum())
        if self._any_clip:
            self._clip_per_member()
        optimizer.step()
        seen = ~torch.isnan(detached)  # torchmetrics' MeanMetric (the unfused run's) leaves NaN batches out
        self.sums += torch.stack([torch.where(seen, detached, 0.0), seen.float(), self._correct(out.detach(), y),
                                  torch.full_like(detached, len(y) // self.k)], 1)
        for i in sorted(self._stop_after_step):
            self._stop_mid_epoch(i)
        self._stop_after_step.clear()
        if not self.active:
            self.trainer.should_stop = True

    def _clip_per_member(self) -> None:
        """torch.nn.utils.clip_grad_norm_ per member: each member's norm over all its gradients."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norms = torch.stack([g.reshape(self.k, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        clip = self._clip.to(norms.device)
        coef = torch.where(clip > 0, (clip / (norms + 1e-6)).clamp(max=1.0), torch.ones_like(norms))
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))

    def _check_divergence(self, after_step: bool) -> None:
        first = self.first_nonfinite.tolist()
        for i in self.active:
            if first[i] >= 0 and self.members[i].diverged_step is None:
                self.members[i].diverged_step = int(first[i])
                if after_step:  # the unfused run stops after this step's update
                    self._stop_after_step.add(i)
                else:
                    self._freeze(i, self.global_step, self.current_epoch + 1)

    def _freeze(self, i: int, step: int, epochs: int) -> None:
        self.members[i].stopped = (step, epochs)
        self.optimizers().optimizer.freeze(i)
        for m in self.net.modules():
            if isinstance(m, FusedBatchNorm):
                m.active[i] = False

    def _stop_mid_epoch(self, i: int) -> None:
        """What Lightning does for a run that stops mid-epoch (should_stop): validation, if this epoch validates,
        then the partial epoch's training metrics; then the member is frozen."""
        member, cfg = self.members[i], self.cfgs[i]
        splits = member.module_splits
        if (self.current_epoch + 1) % cfg.trainer.val_every_n_epochs == 0 and len(splits.x_val):
            result = self.load_member(i).to(self.device).evaluate(splits.x_val, splits.y_val)
            metrics = {"val/loss": result["loss"], "epoch": self.current_epoch}
            if self.n_classes:
                metrics["val/acc"] = result["acc"]
            for logger in member.loggers:
                logger.log_metrics(metrics, step=self.global_step - 1)
        self._log_epoch(i, self.sums[i].tolist())
        self._freeze(i, self.global_step, self.current_epoch + 1)

    def _log_epoch(self, i: int, sums: list[float]) -> None:
        loss, batches, correct, n = sums
        if n:  # every batch NaN: MeanMetric (the lone run's) computes nan, not an error
            metrics = {"train/loss_epoch": loss / batches if batches else float("nan"), "epoch": self.current_epoch}
            if self.n_classes:
                metrics["train/acc"] = correct / n
            for logger in self.members[i].loggers:
                logger.log_metrics(metrics, step=self.global_step - 1)  # Lightning's step for epoch metrics

    def on_train_epoch_end(self):
        sums = self.sums.tolist()
        for i in self.active:
            self._log_epoch(i, sums[i])
        self.sums.zero_()
        self._check_divergence(after_step=False)
        for i in self.active:
            threshold = self.cfgs[i].trainer.stop_at_train_acc
            _, _, correct, n = sums[i]
            if threshold > 0 and self.n_classes and n and correct / n > threshold - 1e-6:
                self._freeze(i, self.global_step, self.current_epoch + 1)
        if not self.active:
            self.trainer.should_stop = True
        # no save here: each member's CSV logger writes every 100 steps as a lone run's does, the runner at the
        # end and Preemption before a checkpoint (16 saves an epoch cost a short-epoch group 0.3 ms a step)

    def on_validation_epoch_start(self):
        self._val = torch.zeros(self.k, 3, device=self.device)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        n = len(y) // self.k
        self._val += torch.stack([self._per_member(out, y) * n, self._correct(out, y),
                                  torch.full((self.k,), float(n), device=out.device)], 1)

    def on_validation_epoch_end(self):
        sums = self._val.tolist()
        for i in self.active:
            loss, correct, n = sums[i]
            if n:
                metrics = {"val/loss": loss / n, "epoch": self.current_epoch}
                if self.n_classes:
                    metrics["val/acc"] = correct / n
                for logger in self.members[i].loggers:
                    logger.log_metrics(metrics, step=self.global_step - 1)

    def configure_optimizers(self):
        c = [cfg.optim for cfg in self.cfgs]
        names = {o.name for o in c}
        if len(names) > 1:
            raise ValueError(f"fusion: one optimizer a group, got {sorted(names)}")
        hparams = {k: [getattr(o, k) for o in c] for k in ("momentum", "weight_decay", "beta1", "beta2", "eps")}
        return MemberOptimizer(self.parameters(), c[0].name, hparams, self._peak)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["members"] = [m.state() for m in self.members]
        if self._dropout_generators:
            checkpoint["dropout_generators"] = [g.get_state() for g in self._dropout_generators]

    def on_load_checkpoint(self, checkpoint):
        for m, state in zip(self.members, checkpoint.get("members", [])):
            m.load(state)
        for g, state in zip(self._dropout_generators, checkpoint.get("dropout_generators", [])):
            g.set_state(state)

    def load_member(self, k: int):
        """Member k's ReproModule with the fused net's current values for it (to evaluate or probe it alone)."""
        module = self.members[k].module
        module.net.load_state_dict(member_state(self.net, k))
        return module

    def unfuse(self) -> None:
        """Copies each member's trained values into its own ReproModule (evaluated and stored as a single run)."""
        for k, m in enumerate(self.members):
            self.load_member(k).diverged_step = m.diverged_step


def fused_steps(module: FusedModule, k: int, trainer) -> tuple[int, int]:
    """(steps, epochs) member k trained: where it was frozen, else where the group ended."""
    stopped = module.members[k].stopped
    return stopped if stopped is not None else (int(trainer.global_step), int(trainer.current_epoch))

