"""The LightningModule: optimiser and schedule from the preset, trainable state only, loss history,
evaluation step."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from engine_fakes import create_fake
from torch.utils.data import DataLoader, Dataset

from pdd.config import resolve_config
from pdd.errors import ConfigError
from pdd.training.module import AnomalyModule, build_optimizer


class RandomImages(Dataset):
    def __init__(self, count: int, size: int = 32) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(count, 3, size, size, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "index": index}


def learning_rates(train: dict, epochs: int) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = build_optimizer([parameter], train)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_reference_schedule_rises_again_after_t_max() -> None:
    """pdd-reference: Adam 2e-3, cosine T_max 40 to lr/10, 100 epochs: the rate is back at 2e-3 at
    epoch 80 (torch's CosineAnnealingLR keeps following the cosine, as the authors' script does)."""
    train = resolve_config("pdd-reference")["train"]
    rates = learning_rates(train, train["epochs"])
    lr, eta_min = 2e-3, 2e-4
    expected = [
        eta_min + (lr - eta_min) * (1 + math.cos(math.pi * e / 40)) / 2
        for e in range(100)
    ]
    assert rates == pytest.approx(expected, rel=1e-6)
    assert rates[40] == pytest.approx(eta_min) and rates[80] == pytest.approx(lr)
    optimizer, _ = build_optimizer([torch.nn.Parameter(torch.zeros(1))], train)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)


def test_constant_rate_without_scheduler_and_unknown_optimiser() -> None:
    train = {
        "optimizer": "adam",
        "lr": 0.1,
        "betas": [0.9, 0.99],
        "scheduler": {"name": "none"},
    }
    assert build_optimizer([torch.nn.Parameter(torch.zeros(1))], train)[1] is None
    with pytest.raises(ConfigError, match="sgd"):
        build_optimizer(
            [torch.nn.Parameter(torch.zeros(1))], {**train, "optimizer": "sgd"}
        )


def test_fused_adam_takes_the_steps_of_torchs_reference_loop() -> None:
    """On the CPU the optimiser is torch's fused Adam, and with the preset's rate, betas and weight
    decay its steps are those of torch's plain per-tensor Adam (an independent implementation),
    to float32 rounding; a lost beta or weight decay moves them by far more."""
    train = {"optimizer": "adam", "lr": 2e-3, "betas": [0.5, 0.999], "weight_decay": 1e-2}
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 3, 3, generator=generator), torch.randn(7, generator=generator)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(5)]

    def run(make: object) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make(params)  # type: ignore[operator]
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        return [p.detach() for p in params]

    optimizer, _ = build_optimizer([torch.nn.Parameter(torch.zeros(1))], train)
    assert optimizer.defaults["fused"] is True
    ours = run(lambda ps: build_optimizer(ps, train)[0])
    reference = run(
        lambda ps: torch.optim.Adam(
            ps, lr=2e-3, betas=(0.5, 0.999), weight_decay=1e-2, foreach=False, fused=False
        )
    )
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours[0], start[0])


def test_real_pdd_module_optimises_only_trainable_parts() -> None:
    from pdd import create_model

    model = create_model("pdd", teachers="random", image_size=32)
    module = AnomalyModule(model)
    optimizer = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in model.teachers.parameters()}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert optimised  # the students and adapters
    assert not [key for key in module.state_dict() if key.startswith("teachers.")]
    assert set(module.state_dict()) == set(model.trainable_state_dict())


def test_training_updates_students_not_teachers_and_records_history() -> None:
    model = create_fake(train={"epochs": 2, "batch_size": 4})
    teacher_before = {k: v.clone() for k, v in model.teachers.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}
    module = AnomalyModule(model)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(RandomImages(8), batch_size=4))
    assert all(
        torch.equal(v, model.teachers.state_dict()[k])
        for k, v in teacher_before.items()
    )
    assert any(
        not torch.equal(v, model.student.state_dict()[k])
        for k, v in student_before.items()
    )
    assert [entry["epoch"] for entry in module.history] == [1.0, 2.0]
    assert set(module.history[0]) == {"epoch", "loss", "mse", "cos"}
    assert module.history[1]["loss"] < module.history[0]["loss"]
    assert {"loss", "mse", "cos"} <= set(trainer.progress_bar_metrics)


def test_history_is_the_image_weighted_epoch_mean() -> None:
    model = create_fake(
        train={"epochs": 1, "batch_size": 3, "lr": 1e-12}
    )  # weights stay put
    module = AnomalyModule(model)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = RandomImages(7)
    trainer.fit(module, DataLoader(data, batch_size=3))
    model.train()
    with torch.no_grad():
        per_batch = [
            (
                model.loss(data.images[i : i + 3])["loss"].item(),
                len(data.images[i : i + 3]),
            )
            for i in range(0, 7, 3)
        ]
    expected = sum(loss * n for loss, n in per_batch) / 7
    assert module.history[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_predict_step_returns_maps_scores_and_indices() -> None:
    module = AnomalyModule(create_fake().eval())
    batch = {"image": torch.randn(3, 3, 32, 32), "index": torch.tensor([4, 5, 6])}
    out = module.predict_step(batch, 0)
    assert out["maps"].shape == (3, 32, 32) and out["scores"].shape == (3,)
    assert torch.equal(out["index"], batch["index"])
    assert torch.allclose(out["scores"], out["maps"].amax(dim=(1, 2)))
