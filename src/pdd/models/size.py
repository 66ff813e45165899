"""The parameter budget: keys each within their bound can still multiply into a model no machine
holds (VMamba widths x depths x ``ssm_ratio``). The model is built on the ``meta`` device (shapes
only: no memory, no weight file read) and its parameters counted before the real build."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pdd.errors import ConfigError

__all__ = ["MAX_PARAMETERS", "check_parameter_budget"]

MAX_PARAMETERS = 2_000_000_000
"""8 GB of float32 weights, about 20x the full PDD model (two teachers and two students, ~0.1
billion); training needs several times the weights again for gradients and the optimiser."""


def check_parameter_budget(preset: str, overrides: Mapping[str, Any]) -> nn.Module:
    """The model's skeleton on the meta device; a ``ConfigError`` when it exceeds the budget.
    Teachers are random in the skeleton: their shapes do not depend on their weights."""
    from pdd import models

    plan = {**overrides, "preset": preset, "teachers": "random", "teacher_weights": {}}
    with torch.device("meta"):
        skeleton = models.create_model(**plan)
    count = sum(tensor.numel() for tensor in skeleton.state_dict().values())
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"model {preset!r} would have {count / 1e9:.1f} billion parameters "
            f"({count * 4 / 2**30:.0f} GiB in float32), more than {MAX_PARAMETERS / 1e9:.0f} "
            "billion: lower the architecture sizes (teacher_options, decoder_blocks)"
        )
    return skeleton
