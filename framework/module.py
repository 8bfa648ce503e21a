"""build_module(cfg) -> LightningModule: the factory that turns a RunConfig into something a Trainer fits."""
from __future__ import annotations

import dataclasses
import functools
import os

import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from framework.config import ModelConfig, RunConfig
from framework.data import build_splits
from framework.datasets import input_shape
from framework.losses import LOSSES
from framework.nets import build_model
from framework.optim_build import build_optimizer
from framework.registry import UserError
from framework.results.measures import steps_per_epoch


class ReproModule(pl.LightningModule):
    def __init__(self, cfg: RunConfig, in_shape: tuple[int, ...], n_outputs: int, n_classes: int,
                 signed: bool = False, steps_per_epoch: int = 1):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.cfg = cfg
        self.n_classes = n_classes
        self.signed = signed
        self.net = build_model(cfg.model, in_shape, n_outputs)
        # NHWC only on CUDA, where tensor-core convolutions want it: on the CPU, PyTorch 2.13/2.14 corrupt the heap
        # in the backward of channels_last convs when the batch size changes (free(): invalid next size).
        self.channels_last = cfg.trainer.channels_last and len(in_shape) == 3
        # compiled alongside, not registered as a submodule: checkpoints keep the plain net's parameter names
        object.__setattr__(self, "_forward", torch.compile(self.net) if cfg.trainer.compile else self.net)
        self.loss_fn = LOSSES.get(cfg.loss.name, "loss.name")(n_classes)
        # the epoch's running sums go into checkpoints, so a run resumed mid-epoch reports whole-epoch metrics
        self.train_loss = MeanMetric()
        self.train_loss.persistent(True)
        if n_classes:
            self.train_acc = MulticlassAccuracy(n_classes, average="micro")
            self.train_acc.persistent(True)
            self.val_acc = MulticlassAccuracy(n_classes, average="micro")
        self.diverged_step: int | None = None
        self.automatic_optimization = False
        self.register_buffer("_first_nonfinite", torch.tensor(-1), persistent=False)

    def on_fit_start(self):
        if self.channels_last and self.device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x):
        if self.channels_last and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._forward(x)

    def training_step(self, batch, batch_idx):
        # Optimised by hand (Lightning's manual optimization): the closure machinery of automatic optimization
        # costs about half a millisecond a step, a tenth of a step of a small net. Hooks, precision, DDP gradient
        # sync and checkpointing of the optimizer and schedule are Lightning's as before.
        x, y = batch
        out = self(x)
        loss = self.loss_fn(out, y)
        detached = loss.detach()
        # Divergence is noted on the device and read at the next logged step: a check every step would make the
        # host wait for the device every step.
        self._first_nonfinite = torch.where(torch.isfinite(detached) | (self._first_nonfinite >= 0),
                                            self._first_nonfinite, self.global_step)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self._log_step(detached)
        if self.cfg.loss.l2:  # L2 in the loss (Loshchilov & Hutter 2019, Sec. 2), left out of the logged loss
            loss = loss + 0.5 * self.cfg.loss.l2 * sum(p.pow(2).sum() for p in self.net.parameters())
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.cfg.trainer.gradient_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.cfg.trainer.gradient_clip,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        self.lr_schedulers().step()
        self.train_loss.update(detached)
        if self.n_classes:
            self.train_acc.update(out.detach(), y)

    def _log_step(self, loss: torch.Tensor) -> None:
        """Step metrics straight to the loggers, at the step Lightning would use: self.log costs about a
        millisecond per call (it moves its whole result collection each time). Also where divergence is read."""
        metrics = {"train/loss": float(loss), "lr": self.optimizers().param_groups[0]["lr"],
                   "epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        self._check_divergence()

    def _check_divergence(self) -> None:
        first = int(self._first_nonfinite)
        if first >= 0 and self.diverged_step is None:
            self.diverged_step = first
            self.trainer.should_stop = True

    def on_train_epoch_end(self):
        self._check_divergence()
        if self.train_loss.update_count:
            metrics = {"train/loss_epoch": self.train_loss.compute()}
            if self.n_classes:
                metrics["train/acc"] = self.train_acc.compute()
            self.log_dict(metrics)
        self.train_loss.reset()
        if self.n_classes:
            self.train_acc.reset()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val/loss", self.loss_fn(out, y), on_epoch=True)
        if self.n_classes:
            self.val_acc(out, y)
            self.log("val/acc", self.val_acc, on_epoch=True)

    def configure_optimizers(self):
        optimizer, schedule = build_optimizer(self.parameters(), [self.cfg], self.steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
        """Loss and accuracy on a whole split, in eval mode (batch norm uses running statistics)."""
        was_training = self.training
        self.eval()
        losses, correct, n = 0.0, 0, len(x)
        dtype = next(self.parameters()).dtype  # trainer.precision=64-true trains in float64: the data follows
        for start in range(0, n, batch_size):
            xb, yb = x[start:start + batch_size].to(self.device), y[start:start + batch_size].to(self.device)
            xb, yb = (t.to(dtype) if t.is_floating_point() else t for t in (xb, yb))
            out = self(xb)
            losses += float(self.loss_fn(out, yb)) * len(xb)
            if self.n_classes:
                correct += int((out.argmax(1) == yb).sum())
            elif self.signed:
                correct += int((torch.sign(out) == yb).sum())
        self.train(was_training)
        result = {"loss": losses / max(1, n)}
        if self.n_classes or self.signed:
            result["acc"] = correct / max(1, n)
            result["error"] = 1 - result["acc"]
        return result


BYTES_PER_PARAMETER = 16  # float32 weights, gradients and two optimizer moments (Adam's)


def available_memory(accelerator: str) -> tuple[int, str]:
    """Bytes of memory a run on this machine can use, and where: the GPU's when the run would use one."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, f"GPU ({torch.cuda.get_device_name(0)})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"


def count_parameters(model_cfg: ModelConfig, in_shape: tuple[int, ...], n_outputs: int) -> int:
    """Parameters of the model, counted on PyTorch's meta device: nothing is allocated."""
    return _count(tuple(sorted(dataclasses.asdict(model_cfg).items())), tuple(in_shape), int(n_outputs))


@functools.lru_cache(maxsize=256)
def _count(model_items: tuple, in_shape: tuple[int, ...], n_outputs: int) -> int:
    with torch.device("meta"):
        net = build_model(ModelConfig(**dict(model_items)), in_shape, n_outputs)
    return sum(p.numel() for p in net.parameters())


def check_model_size(cfg: RunConfig) -> int:
    """Refuses, before anything is allocated, a model whose parameter memory exceeds the machine's."""
    in_shape, n_outputs = input_shape(cfg.data)
    n = count_parameters(cfg.model, tuple(in_shape), int(n_outputs))
    need = n * BYTES_PER_PARAMETER
    have, where = available_memory(cfg.trainer.accelerator)
    if need > have:
        m = cfg.model
        raise UserError(f"model.width: the model (model.name={m.name}, model.depth={m.depth}, model.width={m.width}) "
                        f"has {n:.3g} parameters, about {need / 2**30:,.0f} GiB for weights, gradients and optimizer "
                        f"state ({BYTES_PER_PARAMETER} bytes a parameter), more than this machine's "
                        f"{have / 2**30:,.0f} GiB of {where}")
    return n


def build_module(cfg: RunConfig, splits=None) -> ReproModule:
    """The factory. `splits` is built from cfg.data when not given (it sets the input and output sizes)."""
    if splits is None:
        splits = build_splits(cfg.data)
    per_epoch = steps_per_epoch(len(splits.x_train), cfg.data.batch_size)
    return ReproModule(cfg, splits.in_shape, splits.n_outputs, splits.n_classes, splits.signed, per_epoch)
