"""Batched optimizers against torch.optim, step by step: each member of a stack follows the update torch.optim
makes for that member alone, with its own hyperparameters; a frozen member does not move."""
import pytest
import torch

from framework.config import OptimConfig
from framework.fused_optim import FUSED_OPTIMIZERS, MemberOptimizer
from framework.optim import OPTIMIZERS

MEMBERS = [dict(lr=0.05, momentum=0.9, weight_decay=0.0, beta1=0.9, beta2=0.999, eps=1e-8),
           dict(lr=0.01, momentum=0.5, weight_decay=0.01, beta1=0.8, beta2=0.99, eps=1e-6),
           dict(lr=0.2, momentum=0.0, weight_decay=0.1, beta1=0.95, beta2=0.9, eps=1e-3)]


def test_every_optimizer_has_a_batched_version():
    assert set(OPTIMIZERS.names()) == set(FUSED_OPTIMIZERS.names())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS.names()))
def test_batched_optimizer_follows_torch_optim(name):
    members = [m for m in MEMBERS if not (name == "nesterov" and m["momentum"] == 0)]  # torch refuses that
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,)]
    start = [[torch.randn(s, generator=g) for s in shapes] for _ in members]
    grads = [[[torch.randn(s, generator=g) for s in shapes] for _ in members] for _ in range(12)]
    lr_scale = [1.0 - 0.05 * t for t in range(12)]  # a schedule: the lr changes every step
    # torch.optim, one member at a time
    expected = []
    for i, m in enumerate(members):
        params = [p.clone().requires_grad_() for p in start[i]]
        cfg = OptimConfig(name=name, **{k: v for k, v in m.items() if k != "lr"})
        opt = OPTIMIZERS.get(name)(params, cfg, m["lr"])
        for t, step_grads in enumerate(grads):
            for group in opt.param_groups:
                group["lr"] = m["lr"] * lr_scale[t]
            for p, gr in zip(params, step_grads[i]):
                p.grad = gr.clone()
            opt.step()
        expected.append([p.detach() for p in params])
    # the batched optimizer, all members at once; the last member is frozen after 5 steps
    stacked = [torch.stack([start[i][j] for i in range(len(members))]).requires_grad_() for j in range(len(shapes))]
    hparams = {k: [m[k] for m in members] for k in ("momentum", "weight_decay", "beta1", "beta2", "eps")}
    opt = MemberOptimizer(stacked, name, hparams, [m["lr"] for m in members])
    frozen_at = None
    for t, step_grads in enumerate(grads):
        opt.set_lr([m["lr"] * lr_scale[t] for m in members])
        for j, p in enumerate(stacked):
            p.grad = torch.stack([step_grads[i][j] for i in range(len(members))])
        opt.step()
        if t == 4:
            opt.freeze(len(members) - 1)
            frozen_at = [p.detach()[-1].clone() for p in stacked]
    for i in range(len(members) - 1):
        for j in range(len(shapes)):
            torch.testing.assert_close(stacked[j].detach()[i], expected[i][j], rtol=1e-5, atol=1e-6)
    for j in range(len(shapes)):
        assert torch.equal(stacked[j].detach()[-1], frozen_at[j])
        assert not torch.allclose(frozen_at[j], expected[-1][j])  # it would have moved on


def test_frozen_member_state_survives_a_checkpoint_round_trip():
    p = torch.zeros(2, 3, requires_grad=True)
    opt = MemberOptimizer([p], "adam", {"beta1": [0.9, 0.9], "beta2": [0.999, 0.999], "eps": [1e-8, 1e-8],
                                        "weight_decay": [0.0, 0.0]}, [0.1, 0.1])
    p.grad = torch.ones(2, 3)
    opt.step()
    opt.freeze(1)
    again = MemberOptimizer([p], "adam", {"beta1": [0.9, 0.9], "beta2": [0.999, 0.999], "eps": [1e-8, 1e-8],
                                          "weight_decay": [0.0, 0.0]}, [0.1, 0.1])
    again.load_state_dict(opt.state_dict())
    before = p.detach().clone()
    again.step()
    assert torch.equal(p.detach()[1], before[1]) and not torch.equal(p.detach()[0], before[0])
