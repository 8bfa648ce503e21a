"""Every registry entry builds, is the component the run uses, and takes real optimisation steps in a real
Lightning Trainer."""
import math

import pytest
import torch

from framework.data import build_splits
from framework.datasets import DATASETS
from framework.losses import LOSSES
from framework.models import ACTIVATIONS, INITS, MODELS, activation_modules, linear_layers
from framework.module import build_module
from framework.optim import OPTIMIZERS, SCHEDULES, effective_lr, lr_factor
from framework.results.measures import steps_per_epoch
from framework.runner import train
from tests.helpers import shared_data


def _steps(cfg, store):
    summary = train(cfg, store)
    assert summary["status"] == "done", summary
    assert summary["steps"] > 0 and math.isfinite(summary["train_loss"])
    return summary


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_activations(activation, tiny, store):
    cfg = tiny(model__activation=activation)
    used = activation_modules(build_module(cfg).net)
    named = ACTIVATIONS.get(activation)
    assert len(used) == cfg.model.depth and all(a is named and type(m) is type(named.build()) for m, a in used)
    _steps(cfg, store)


def _first_weights(cfg) -> torch.Tensor:
    torch.manual_seed(0)
    return linear_layers(build_module(cfg).net)[0].weight.detach().clone()


@pytest.mark.parametrize("init", INITS.names())
def test_inits(init, tiny, store):
    """The named init is the one applied: the same seed gives the same weights under it, and other weights under
    every other init."""
    cfg = tiny(model__init=init, model__init_value=0.1)
    mine = _first_weights(cfg)
    assert torch.equal(mine, _first_weights(cfg))
    for other in INITS.names():
        if other != init:
            assert not torch.equal(mine, _first_weights(tiny(model__init=other, model__init_value=0.1))), other
    _steps(cfg, store)


CONV = ("convnet", "cnn5", "resnet18", "vgg")


@pytest.mark.parametrize("model", [m for m in MODELS.names() if m not in CONV])
@pytest.mark.parametrize("arch", [{}, {"model.residual": True}, {"model.batch_norm": True},
                                  {"model.dropout": 0.3}, {"model.depth": 0}])
def test_models(model, arch, tiny, store):
    cfg = tiny(model__name=model, **{k.replace(".", "__"): v for k, v in arch.items()})
    named = MODELS.get(model)(cfg.model, (6,), 3)
    assert type(build_module(cfg).net) is type(named)
    _steps(cfg, store)


@pytest.mark.parametrize("model", CONV)
def test_conv_models(model, tiny, store, cifar_root):
    """Each conv net takes real steps on CIFAR-shaped images, with on-device augmentation and channels_last."""
    arch = {"model.depth": 11} if model == "vgg" else {"model.depth": 4, "model.residual": True,
                                                        "model.batch_norm": True}
    cfg = tiny(model__name=model, model__width=4, data__name="cifar10", data__root=str(cifar_root),
               data__verify=False, data__augment="crop_flip", trainer__channels_last=True,
               **{k.replace(".", "__"): v for k, v in arch.items()})
    summary = _steps(cfg, store)
    diag = store.read_frame("test", summary["run_id"], "diagnostics.csv")
    assert diag["layer"].nunique() == len([m for m in build_module(cfg).net.modules()
                                           if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])


def test_conv_model_on_flat_data_names_the_problem(tiny):
    from framework.registry import UserError
    with pytest.raises(UserError, match=r"model.name=cnn5 needs images .* shape \(6,\)"):
        build_module(tiny(model__name="cnn5"))


@pytest.mark.parametrize("loss", LOSSES.names())
def test_losses(loss, tiny, store):
    cfg = tiny(loss__name=loss)
    assert type(build_module(cfg).loss_fn) is type(LOSSES.get(loss)(3))
    _steps(cfg, store)


@pytest.mark.parametrize("optimizer", OPTIMIZERS.names())
def test_optimizers(optimizer, tiny, store):
    """The run steps with the named torch optimizer, at the run's learning rate and hyperparameters."""
    cfg = tiny(optim__name=optimizer, optim__lr=0.01, optim__weight_decay=1e-4)
    used = build_module(cfg).configure_optimizers()["optimizer"]
    named = OPTIMIZERS.get(optimizer)([torch.zeros(1, requires_grad=True)], cfg.optim, 0.01)
    assert type(used) is type(named) and used.defaults == named.defaults
    _steps(cfg, store)


@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_schedules(schedule, tiny, store):
    """The learning rate the run logged at every step is the named schedule's (after its warm-up)."""
    cfg = tiny(schedule__name=schedule, schedule__warmup_epochs=0.5, trainer__max_epochs=4)
    summary = _steps(cfg, store)
    logged = store.read_frame("test", summary["run_id"], "metrics.csv").dropna(subset=["lr"])
    per_epoch = steps_per_epoch(summary["n_train"], cfg.data.batch_size)
    factor = lr_factor(cfg.schedule, per_epoch * cfg.trainer.max_epochs, per_epoch)
    expected = [effective_lr(cfg.optim, cfg.data.batch_size) * factor(int(t)) for t in logged["step"]]
    assert logged["lr"].tolist() == pytest.approx(expected, rel=1e-6) and len(expected) == summary["steps"]


IMAGES = {"mnist": (70000, "MNIST"), "fashion_mnist": (70000, "FashionMNIST"), "cifar10": (140, None),
          "cifar100": (240, None)}


OWN_TEST_DRAW = ("quadratic", "location")


@pytest.mark.parametrize("dataset", DATASETS.names())
def test_datasets(dataset, tiny, store, cifar_root):
    loss = "mse" if dataset in ("regression1d", "wilson") else "squared" if dataset in OWN_TEST_DRAW else \
        "cross_entropy"
    extra = {}
    if dataset in IMAGES:
        n, folder = IMAGES[dataset]
        root = shared_data(folder) if folder else cifar_root
        n_train = 300 if folder else 50
        extra = {"data__root": str(root), "data__verify": folder is not None, "data__n_train": n_train}
    cfg = tiny(data__name=dataset, loss__name=loss, **extra)
    splits = build_splits(cfg.data)
    if dataset in IMAGES:  # the official test split is kept whole; validation comes out of the training pool
        assert len(splits.x_test) == {"mnist": 10000, "fashion_mnist": 10000}.get(dataset, 40)
        assert splits.x_train.shape[1:] == ((1, 28, 28) if folder else (3, 32, 32))
        assert len(splits.x_train) == n_train and splits.n_classes == (100 if dataset == "cifar100" else 10)
    elif dataset in OWN_TEST_DRAW:  # the synthetic problems draw their test split apart: n_samples each
        assert len(splits.x_train) + len(splits.x_val) == 240 and len(splits.x_test) == 240
    else:
        assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == (1797 if dataset == "digits" else 240)
    features = {"digits": 64, "gaussian": 6, "regression1d": 1, "wilson": 3 + 5 * 240, "mnist": 784,
                "fashion_mnist": 784, "cifar10": 3072, "cifar100": 3072, "quadratic": 6, "location": 1,
                "random_images": 3072}[dataset]
    assert splits.x_train[0].numel() == features
    from framework.datasets import input_shape
    assert tuple(input_shape(cfg.data)[0]) == splits.in_shape and input_shape(cfg.data)[1] == splits.n_outputs, \
        "the shape the memory check assumes is the shape the data has"
    _steps(cfg, store)


def test_warmup_then_schedule():
    from framework.config import ScheduleConfig
    f = lr_factor(ScheduleConfig(name="cosine", warmup_epochs=1.0), total_steps=110, steps_per_epoch=10)
    assert [round(f(t), 3) for t in range(3)] == [0.1, 0.2, 0.3]
    assert f(9) == 1.0 and f(10) == 1.0 and f(110) == pytest.approx(0.0)
    f = lr_factor(ScheduleConfig(name="inverse_time", time_constant=10), 100, 10)
    assert f(10) == pytest.approx(0.5)
    f = lr_factor(ScheduleConfig(name="step", step_epochs=2, gamma=0.5), 100, 10)
    assert (f(19), f(20), f(40)) == (1.0, 0.5, 0.25)


def test_linear_scaling_rule_reaches_the_optimizer(tiny, store):
    from framework.config import OptimConfig
    assert effective_lr(OptimConfig(lr=0.1, base_batch_size=32), 256) == pytest.approx(0.8)
    cfg = tiny(optim__lr=0.01, optim__base_batch_size=16, data__batch_size=64)
    summary = _steps(cfg, store)
    assert summary["lr_effective"] == pytest.approx(0.04)
    metrics = store.read_frame("test", summary["run_id"], "metrics.csv")
    assert metrics["lr"].dropna().iloc[0] == pytest.approx(0.04)
