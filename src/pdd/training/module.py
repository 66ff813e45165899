"""The LightningModule around an ``AnomalyModel``: training step, optimiser, evaluation step.

The model (a plain ``nn.Module``, see ``pdd.models``) owns the method; this wrapper only adds what
Lightning needs to train it. Its state is the model's *trainable* state: frozen teachers are rebuilt
from their identity, so they are kept out of every training-state checkpoint. With a
``FeatureCache`` the teachers' features of a batch come from it (``model.loss_from_features``), which
gives the same loss as ``model.loss``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from pdd.errors import ConfigError
from pdd.training.feature_cache import FeatureCache, teacher_features

__all__ = ["AnomalyModule", "build_optimizer"]


# Devices with torch's fused Adam kernel: one vectorised pass over every parameter, against the
# default per-tensor loop's several on the CPU (rd4ad's 84 M trainable values: 250 -> 121 ms per
# step on an AMD EPYC; benchmarks/README.md, "Fused Adam").
_FUSED_ADAM_DEVICES = frozenset({"cpu", "cuda"})


def _fused_adam_supported(parameters: list[nn.Parameter]) -> bool:
    """Whether torch's fused Adam can step all of ``parameters`` (floating point, one fused device)."""
    return bool(parameters) and all(
        p.device.type in _FUSED_ADAM_DEVICES and p.is_floating_point() for p in parameters
    )


def build_optimizer(
    parameters: list[nn.Parameter], train: Mapping[str, Any]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """Optimiser and per-epoch scheduler as the preset's ``train`` section says.

    Adam runs as torch's fused kernel where every parameter's device has one (CPU, CUDA): the same
    update as the per-tensor loop up to float32 rounding, in one pass instead of several.

    The cosine schedule is torch's ``CosineAnnealingLR`` as is: when a preset trains for more epochs
    than ``t_max`` (pdd-reference: 100 epochs, T_max 40) the rate rises again after ``t_max``, which
    is what the authors' script does. It is reproduced, not "fixed".
    """
    name = str(train.get("optimizer", "adam")).lower()
    if name != "adam":
        raise ConfigError(f"train.optimizer: only 'adam' is supported, got {name!r}")
    lr = float(train["lr"])
    beta1, beta2 = (float(b) for b in train.get("betas", (0.9, 0.999)))
    optimizer = torch.optim.Adam(
        parameters,
        lr=lr,
        betas=(beta1, beta2),
        weight_decay=float(train.get("weight_decay", 0.0)),
        fused=_fused_adam_supported(parameters),
    )
    schedule = train.get("scheduler") or {"name": "none"}
    kind = str(schedule.get("name", "none")).lower()
    if kind == "none":
        return optimizer, None
    if kind != "cosine":
        raise ConfigError(
            f"train.scheduler.name: expected cosine or none, got {kind!r}"
        )
    eta_min = lr * float(schedule.get("eta_min_ratio", 0.0))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=int(schedule["t_max"]), eta_min=eta_min
    )
    return optimizer, scheduler


class AnomalyModule(L.LightningModule):
    """Trains an ``AnomalyModel`` with its own loss; evaluates it with its ``forward``.

    Keeps per-epoch means of every loss term in ``history`` (summed over all devices, saved in
    training-state checkpoints so a resumed run reports the same curve as an uninterrupted one).
    """

    def __init__(self, model: nn.Module, feature_cache: FeatureCache | None = None) -> None:
        super().__init__()
        self.model = model
        self.feature_cache = feature_cache
        self.history: list[dict[str, float]] = []
        self._sums: dict[
            str, float
        ] = {}  # this process's loss sums (x images) of one epoch
        self._count = 0
        self._sums_epoch: int | None = (
            None  # the epoch they belong to; None: nothing pending
        )

    # -- state: trainable parts only -----------------------------------------------------------

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The model's trainable state; teachers are rebuilt from their identity, not stored."""
        return dict(self.model.trainable_state_dict())

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        return self.model.load_trainable_state_dict(dict(state_dict))

    # -- training ---------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer(parameters, self.model.config["train"])
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        if self._sums_epoch is not None and self._sums_epoch != self.current_epoch:
            # Resumed from a state saved after an epoch's last batch, before its end hook ran.
            self._close_epoch()
        images = batch["image"]
        if self.feature_cache is not None:
            features = self.feature_cache.features(self.model, images, batch["pixels_key"])
            terms = self.model.loss_from_features(features)
        elif hasattr(self.model, "loss_from_features"):
            # As the cache computes them: a short batch's teachers run at the full batch size.
            batch_size = int(self.model.config["train"]["batch_size"])
            features = teacher_features(self.model, images, batch_size)
            terms = self.model.loss_from_features(features)
        else:
            terms = self.model.loss(images)
        size = int(images.shape[0])
        detached = {name: value.detach() for name, value in terms.items()}
        self.log_dict(
            detached, prog_bar=True, on_step=True, on_epoch=False, batch_size=size
        )
        for name, value in detached.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value) * size
        self._count += size
        self._sums_epoch = self.current_epoch
        return terms["loss"]

    def on_train_epoch_end(self) -> None:
        self._close_epoch()

    def on_train_end(self) -> None:
        self._close_epoch()

    def _totals(self) -> tuple[list[str], torch.Tensor]:
        """Loss sums and image count of all processes (a collective call under DDP)."""
        names = sorted(self._sums)
        totals = torch.tensor(
            [self._sums[n] for n in names] + [float(self._count)], dtype=torch.float64
        )
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(
                totals.to(self.device), reduce_op="sum"
            ).cpu()
        return names, totals

    def _close_epoch(self) -> None:
        """Append the pending epoch's mean loss terms to ``history``."""
        if self._sums_epoch is None:
            return
        names, totals = self._totals()
        count = float(totals[-1])
        self.history.append(
            {
                "epoch": float(self._sums_epoch + 1),
                **{n: float(totals[i]) / count for i, n in enumerate(names)},
            }
        )
        self._sums, self._count, self._sums_epoch = {}, 0, None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every process calls this. The sums of all processes are stored as one total and restored
        # on rank 0 (zeros elsewhere), so an epoch's mean is the same with or without a restart.
        names, totals = self._totals()
        checkpoint["pdd_history"] = [dict(entry) for entry in self.history]
        checkpoint["pdd_pending_epoch"] = {
            "epoch": self._sums_epoch,
            "sums": {name: float(totals[i]) for i, name in enumerate(names)},
            "count": int(totals[-1]),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in checkpoint.get("pdd_history", [])]
        pending = checkpoint.get(
            "pdd_pending_epoch", {"epoch": None, "sums": {}, "count": 0}
        )
        self._sums_epoch = pending["epoch"]
        leader = self.global_rank == 0
        self._sums = {
            name: (value if leader else 0.0) for name, value in pending["sums"].items()
        }
        self._count = int(pending["count"]) if leader else 0

    # -- evaluation -------------------------------------------------------------------------

    def predict_step(
        self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """Anomaly maps [B,S,S] and scores [B] of a batch, with the dataset indices they belong to."""
        maps, scores = self.model(batch["image"])
        return {"index": batch["index"], "maps": maps, "scores": scores}

    def test_step(
        self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        return self.predict_step(batch, batch_idx, dataloader_idx)
