"""PDD inside anomalib: our presets (``pdd``, ``pdd-reference``, any other) as an ``AnomalibModule``.

    from anomalib.data import Folder
    from anomalib.engine import Engine
    from pdd.integrations.anomalib import Pdd

    datamodule = Folder(name="scans", root="data", normal_dir="train/good",
                        abnormal_dir="test/lesion", normal_test_dir="test/good")
    model = Pdd("pdd")                        # or Pdd("pdd-reference"), Pdd("pdd", image_size=128)
    engine = Engine()
    engine.fit(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule)    # anomalib's usual metrics and images

The wrapped network is ``pdd.create_model(preset, **overrides)`` unchanged, trained with the
preset's own loss, optimiser, schedule and epochs (``trainer_arguments``; an Engine's
``max_epochs`` is overridden by them, as for anomalib's own models). anomalib's pre-processor is
resize (antialiased bilinear) and ImageNet normalisation at the preset's image size, which is what
``pdd.data.to_model_input`` does, so for the same weights the raw anomaly maps and image scores
equal ``pdd``'s; anomalib's post-processor then normalises them for its metrics and thresholds, as
for any anomalib model (pass ``post_processor=False`` for the raw values).

anomalib is an optional extra (``pip install -e ".[anomalib]"``); this module imports it at the
top, and nothing else in ``pdd`` imports this module.
"""

from __future__ import annotations

from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch, InferenceBatch
from anomalib.models.components import AnomalibModule
from torch import nn

from pdd.config import resolve_config
from pdd.models import create_model
from pdd.training.module import build_optimizer

__all__ = ["Pdd", "PddTorchModel"]


class PddTorchModel(nn.Module):
    """A pdd model with anomalib's output type: ``InferenceBatch(pred_score, anomaly_map)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.pdd = model

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        maps, scores = self.pdd(images)
        return InferenceBatch(pred_score=scores, anomaly_map=maps[:, None])


class Pdd(AnomalibModule):
    """A pdd preset as an anomalib model; ``overrides`` are ``pdd.create_model``'s (config keys,
    e.g. ``image_size=128``, ``teachers="random"``, ``**{"train.epochs": 20}``)."""

    def __init__(
        self,
        preset: str = "pdd",
        *,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Any = True,
        visualizer: Any = True,
        **overrides: Any,
    ) -> None:
        config = resolve_config(preset, overrides)  # a bad preset or key fails before anything
        size = int(config["image_size"])
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((size, size))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.preset = preset
        self.model = PddTorchModel(create_model(preset, **overrides))

    @property
    def config(self) -> dict[str, Any]:
        """The resolved pdd config of the wrapped model (``create_model(**config)`` rebuilds it)."""
        return dict(self.model.pdd.config)

    @property
    def learning_type(self) -> LearningType:
        return LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """The preset's schedule: its epochs and gradient accumulation; no sanity validation."""
        train = self.model.pdd.config["train"]
        return {
            "max_epochs": int(train["epochs"]),
            "accumulate_grad_batches": int(train.get("accumulate_grad_batches", 1)),
            "num_sanity_val_steps": 0,
        }

    def configure_optimizers(self) -> Any:
        """The preset's optimiser and schedule, over the students' parameters (teachers frozen)."""
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer(parameters, self.model.pdd.config["train"])
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> torch.Tensor:
        del args, kwargs
        terms = self.model.pdd.loss(batch.image)
        self.log("train_loss", terms["loss"].detach(), prog_bar=True, batch_size=len(batch.image))
        return terms["loss"]

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        """Raw maps and scores, from which anomalib's post-processor learns its normalisation."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())
