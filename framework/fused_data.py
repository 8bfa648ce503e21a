"""A fused group's data: the members' batches side by side (each member its own seed, order and tensors), as one
Lightning data module."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from framework.data import TensorBatches, rank_and_world


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
