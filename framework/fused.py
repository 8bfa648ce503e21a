"""Fused training: K runs of one architecture trained as one model, each still its own run.

The fused net (framework/fused_layers.py) stacks every member's parameters along dim 0; its batches put the
members' batches side by side (framework/fused_data.py).

Each member has its own initialisation (its net is built exactly as an unfused run builds it, then stacked), its
own data order and data (its seed, label noise, corruption), its own optimizer hyperparameters and schedule
(framework/fused_optim.py), its own loggers and its own divergence and early stop: a member that stops is
frozen at the step its unfused run would have stopped at, and the group goes on until every member has.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from framework.fused_layers import FusedBatchNorm, FusedDropout, fuse_nets, member_state
from framework.losses import LOSSES
from framework.optim_build import build_optimizer, schedules


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
        self._peak, self._factors = schedules(self.cfgs, self.steps_per_epoch)
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
        return build_optimizer(self.parameters(), self.cfgs, self.steps_per_epoch)[0]

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

