"""The one typed schema (pydantic v2) of every model key, fit option and checkpoint value.

A preset, a ``--config`` file, ``--set``, a saved ``config.yaml``, a benchmark suite's model
settings and a checkpoint's stored config all pass through these models, so a value has one type
and one set of bounds wherever it comes from. ``messages`` turns a failure into the one-line
``ConfigError`` that names the key.

Architecture sizes are bounded so that a typo (``decoder_blocks: [100000, 1, 1]``) or a forged
checkpoint fails in a second, before any model is built, instead of allocating until memory runs
out. The bounds are generous for real use:

- ``MAX_IMAGE_SIZE`` 1024: activations grow with S squared; at 1024 one image already needs several
  GB in the teachers (16x the paper's 256).
- ``MAX_SIGMA`` 256: the Gaussian's radius is 4 sigma, so 256 already spans the largest map.
- ``MAX_BLOCKS`` 16 residual blocks per decoder stage or bottleneck: the deepest stage mirrored is
  Wide-ResNet-50-2's 6 blocks.
- ``MAX_VMAMBA_DEPTH`` 32 blocks per VMamba stage (VMamba-Base v0 has 27), ``MAX_STAGES`` 8.
- ``MAX_WIDTH`` 4096 channels in any VMamba stage (VMamba-Base reaches 1024), also the bound of
  ``ssm_dt_rank``; ``MAX_D_STATE`` 256 (official 16), ``MAX_RATIO`` 16 for ``ssm_ratio`` and
  ``mlp_ratio`` (official 2 and 0), patch size 32 (official 4), conv kernel 31 (official 3),
  16 input channels (images have 3).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from pdd.config.messages import rule, value_problem

__all__ = [
    "ACCELERATORS",
    "DATASET_FORMATS",
    "FEATURE_CACHE_DTYPES",
    "FEATURE_CACHE_MODES",
    "LOGGERS",
    "MAX_BLOCKS",
    "MAX_IMAGE_SIZE",
    "MAX_SEED",
    "MAX_SIGMA",
    "MAX_WIDTH",
    "MODEL_SCHEMAS",
    "PRECISIONS",
    "STRATEGIES",
    "TEACHER_KINDS",
    "TEACHER_NAMES",
    "CheckpointMeta",
    "FitSettings",
    "PDDConfig",
    "RD4ADConfig",
    "StoredCheckpoint",
]

TEACHER_NAMES = ("wide_resnet50_2", "vmamba_tiny_v0")
TEACHER_KINDS = ("pretrained", "random")
DATASET_FORMATS = ("auto", "folder", "headct", "brainmri", "zhanglab", "unimedical", "bmad")
FEATURE_CACHE_MODES = ("auto", "memory", "disk", "off")
FEATURE_CACHE_DTYPES = ("float32", "bfloat16")
LOGGERS = ("csv", "tensorboard", "mlflow")
ACCELERATORS = ("cpu", "gpu", "auto")
STRATEGIES = ("ddp", "auto")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")

MAX_IMAGE_SIZE = 1024
MAX_SIGMA = MAX_IMAGE_SIZE / 4
MAX_BLOCKS = 16
MAX_VMAMBA_DEPTH = 32
MAX_STAGES = 8
MAX_WIDTH = 4096
MAX_D_STATE = 256
MAX_RATIO = 16.0
MAX_SEED = 2**32 - 1
"""Seeds go to numpy, which accepts 0 .. 2**32 - 1."""
_VMAMBA_STAGES = 4  # VMamba-Tiny's stages when ``depths`` is not given

_STRICT = ConfigDict(strict=True, extra="forbid")


def _number(**bounds: float) -> Any:
    return Annotated[float, Field(allow_inf_nan=False, **bounds)]


def _integer(**bounds: int) -> Any:
    return Annotated[int, Field(**bounds)]


def _tagged(**branches: Any) -> Any:
    """A union whose branch is chosen by the value's shape, so an error names only that branch.
    Tags are written ``<...>``; ``messages.key_path`` leaves them out of key names."""
    def pick(value: Any) -> str:
        for tag, (accepts, _) in branches.items():
            if accepts(value):
                return f"<{tag}>"
        return f"<{list(branches)[-1]}>"

    options = tuple(Annotated[kind, Tag(f"<{tag}>")] for tag, (_, kind) in branches.items())
    return Annotated[Union[options], Discriminator(pick)]  # noqa: UP007 (a runtime tuple)


def _auto_or(kind: Any) -> Any:
    return _tagged(auto=(lambda v: isinstance(v, str), Literal["auto"]), number=(lambda v: True, kind))


def _image_size(value: int) -> int:
    if value > MAX_IMAGE_SIZE:
        raise value_problem(
            f"must be at most {MAX_IMAGE_SIZE} (activation memory grows with the size squared)"
        )
    if value % 32:
        raise value_problem("must be a multiple of 32 (the teachers downsample by 32)")
    return value


def _file_path(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _betas(value: list[float]) -> list[float]:
    if not all(0.0 <= beta < 1.0 for beta in value):
        raise value_problem("must be a list of two numbers in [0, 1)")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise value_problem(f"not a valid regular expression ({exc})") from None
    return value


ImageSize = Annotated[int, Field(ge=32), AfterValidator(_image_size)]
Blocks = _integer(ge=1, le=MAX_BLOCKS)
Positive = _number(gt=0.0)
Finite = _number()
Count = _integer(ge=1)
Seed = _integer(ge=0, le=MAX_SEED)
Text = Annotated[str, Field(min_length=1)]
Regex = Annotated[str, Field(min_length=1), AfterValidator(_regex)]
Width = _integer(ge=1, le=MAX_WIDTH)


class _Section(BaseModel):
    model_config = _STRICT


# --------------------------------------------------------------------------- model config
class Scheduler(_Section):
    name: Literal["cosine", "none"]
    t_max: Count | None = None
    eta_min_ratio: _number(ge=0.0, le=1.0) | None = None

    @model_validator(mode="after")
    def _parameters(self) -> Scheduler:
        if self.name == "cosine":
            for key in ("t_max", "eta_min_ratio"):
                if getattr(self, key) is None:
                    raise rule(key, "is required by the cosine scheduler")
        else:  # a constant rate has no schedule; drop parameters left over from a merged preset
            self.t_max = self.eta_min_ratio = None
        return self


class Train(_Section):
    optimizer: Literal["adam"]
    lr: Positive
    betas: Annotated[list[Finite], Field(min_length=2, max_length=2), AfterValidator(_betas)]
    weight_decay: _number(ge=0.0)
    epochs: Count
    batch_size: Count
    accumulate_grad_batches: Count | None = None  # configs saved before it existed leave it out
    scheduler: Scheduler


class TeacherWeights(_Section):
    """A weight file per teacher; it takes precedence over ``teachers``."""

    wide_resnet50_2: Annotated[str, BeforeValidator(_file_path)] | None = None
    vmamba_tiny_v0: Annotated[str, BeforeValidator(_file_path)] | None = None


class VMambaOptions(BaseModel):
    """Types and bounds of VMamba's numeric architecture keys. Other keys (``forward_type``, ...)
    pass through: the teacher accepts only the values it implements and names the key."""

    model_config = ConfigDict(strict=True, extra="allow")

    depths: Annotated[
        list[_integer(ge=0, le=MAX_VMAMBA_DEPTH)], Field(min_length=1, max_length=MAX_STAGES)
    ] | None = None
    dims: _tagged(
        list=(lambda v: isinstance(v, (list, tuple)), Annotated[list[Width], Field(max_length=MAX_STAGES)]),
        int=(lambda v: True, Width),
    ) | None = None
    patch_size: _integer(ge=1, le=32) | None = None
    in_chans: _integer(ge=1, le=16) | None = None
    ssm_d_state: _integer(ge=1, le=MAX_D_STATE) | None = None
    ssm_ratio: _number(gt=0.0, le=MAX_RATIO) | None = None
    ssm_dt_rank: _auto_or(Width) | None = None
    ssm_conv: _integer(ge=1, le=31) | None = None
    ssm_conv_bias: bool | None = None
    mlp_ratio: _number(ge=0.0, le=MAX_RATIO) | None = None
    patch_norm: bool | None = None

    @model_validator(mode="after")
    def _widest_stage(self) -> VMambaOptions:
        """An int ``dims`` doubles at every stage: bound the widest, not just the first."""
        if isinstance(self.dims, int):
            stages = len(self.depths) if self.depths is not None else _VMAMBA_STAGES
            widest = self.dims * 2 ** (stages - 1)
            if widest > MAX_WIDTH:
                raise rule(
                    "dims", f"{self.dims} doubled over {stages} stages is {widest} channels, "
                    f"more than {MAX_WIDTH}"
                )
        return self


class TeacherOptions(_Section):
    """Architecture options per teacher (e.g. a small VMamba in tests)."""

    wide_resnet50_2: dict[str, Any] | None = None  # the teacher takes none and says so
    vmamba_tiny_v0: VMambaOptions | None = None


class _ModelConfig(_Section):
    preset: str
    family: str
    description: str
    image_size: ImageSize
    teachers: Literal["pretrained", "random"]
    teacher_weights: TeacherWeights
    teacher_seed: Seed
    teacher_options: TeacherOptions
    sigma: _number(gt=0.0, le=MAX_SIGMA)
    decoder_blocks: Annotated[list[Blocks], Field(min_length=3, max_length=3)]
    train: Train


class Loss(_Section):
    a: _number(ge=0.0)
    b: _number(ge=0.0)
    w: _number(ge=0.0)
    tau_low: _number(ge=-1.0, le=1.0)
    tau_high: _number(ge=-1.0, le=1.0)


class PDDConfig(_ModelConfig):
    family: Literal["pdd"]
    dual_teacher: bool
    ina: bool
    mpa: bool
    num_students: Literal[1, 2]
    students: Literal["separate", "shared"]
    cos_term: Literal["one_minus", "plus"]
    diversity: bool
    loss: Loss

    @model_validator(mode="after")
    def _combinations(self) -> PDDConfig:
        """Combinations that would silently not do what they say."""
        if self.ina and not self.dual_teacher:
            raise rule("ina", "InA adapts VMamba features, so it needs dual_teacher: true")
        if self.diversity and self.num_students != 2:
            raise rule("diversity", "the diversity loss needs num_students: 2")
        if self.num_students == 2 and self.students == "shared" and not self.mpa:
            raise rule(
                "students",
                "shared students without the MPA prior compute the same features twice; "
                "use num_students: 1",
            )
        return self


class RD4ADConfig(_ModelConfig):
    family: Literal["rd4ad"]
    bottleneck_blocks: Blocks


MODEL_SCHEMAS: dict[str, type[_ModelConfig]] = {"pdd": PDDConfig, "rd4ad": RD4ADConfig}


# --------------------------------------------------------------------------- fit options
def _path(value: Any) -> Any:
    if isinstance(value, str) and value:
        return Path(value).expanduser()
    if isinstance(value, Path):
        return value
    raise value_problem("must be a path")


def _seed_list(value: Any) -> Any:
    """A seed, a list of seeds or ``"0,1,2"`` (the command line's spelling) -> a list."""
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split(",")]
        except ValueError:
            raise value_problem("must be comma-separated whole numbers") from None
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


def _distinct_seeds(seeds: list[int]) -> list[int]:
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise value_problem(f"a seed must be between 0 and {MAX_SEED} (2**32 - 1)", seed)
    if len(set(seeds)) != len(seeds):
        raise value_problem("seeds repeat", seeds)
    return seeds


PathValue = Annotated[Path, BeforeValidator(_path)]
Seeds = Annotated[
    list[int], BeforeValidator(_seed_list), Field(min_length=1), AfterValidator(_distinct_seeds)
]


class FitSettings(_Section):
    """Every option of ``pdd fit`` (``FitOptions`` minus the model overrides), each optional:
    None means "not given here", so a config file and the command line can be checked apart
    and merged with the command line winning."""

    data: PathValue | None = None
    out: PathValue | None = None
    format: Literal[DATASET_FORMATS] | None = None  # type: ignore[valid-type]
    preset: Text | None = None
    teachers: Literal[TEACHER_KINDS] | None = None  # type: ignore[valid-type]
    image_size: Count | None = None  # bounded with the model config it sets
    epochs: Count | None = None
    batch_size: Count | None = None
    seeds: Seeds | None = None
    split_file: PathValue | None = None
    class_name: Text | None = None
    joint: bool | None = None
    holdout_fraction: _number(ge=0.0, lt=1.0) | None = None
    fpr: _number(gt=0.0, lt=1.0) | None = None
    feature_cache: Literal[FEATURE_CACHE_MODES] | None = None  # type: ignore[valid-type]
    feature_cache_dtype: Literal[FEATURE_CACHE_DTYPES] | None = None  # type: ignore[valid-type]
    group_by: Regex | None = None
    accelerator: Literal[ACCELERATORS] | None = None  # type: ignore[valid-type]
    devices: _auto_or(Count) | None = None
    num_nodes: Count | None = None
    strategy: Literal[STRATEGIES] | None = None  # type: ignore[valid-type]
    precision: Literal[PRECISIONS] | None = None  # type: ignore[valid-type]
    num_workers: _integer(ge=0) | None = None
    checkpoint_every_n_steps: Count | None = None
    logger: Literal[LOGGERS] | None = None  # type: ignore[valid-type]

    def given(self) -> dict[str, Any]:
        """The options set here (not None), as FitOptions keyword arguments."""
        return {key: value for key, value in self if value is not None}


# --------------------------------------------------------------------------- checkpoint values
class MapStats(_Section):
    """The heatmap colour scale chosen on held-out normals."""

    vmin: Finite
    vmax: Finite

    @model_validator(mode="after")
    def _range(self) -> MapStats:
        if not self.vmax > self.vmin:
            raise rule("vmax", f"must be above vmin ({self.vmin}), got {self.vmax}")
        return self


class Provenance(BaseModel):
    """How a model was trained; the keys ``pdd test`` reads are typed, others are records."""

    model_config = ConfigDict(strict=True, extra="allow")

    seed: Seed | None = None
    joint: bool | None = None
    class_name: str | None = None
    holdout_fraction: _number(ge=0.0, lt=1.0) | None = None
    group_by: Regex | None = None
    image_size: ImageSize | None = None
    batch_size: Count | None = None
    epochs: Count | None = None
    dataset: str | None = None


class CheckpointMeta(BaseModel):
    """What ``runs.checkpoint.save(**meta)`` may carry. Known keys are typed; a key this version
    does not know is kept as plain data (a newer pdd may store more)."""

    model_config = ConfigDict(strict=True, extra="allow")

    threshold: Finite | None = None
    map_stats: MapStats | None = None
    class_thresholds: dict[str, Finite] | None = None
    provenance: Provenance | None = None
    normal_scores: list[Finite] | None = None
    fpr: _number(gt=0.0, lt=1.0) | None = None
    alpha: _number(gt=0.0, lt=1.0) | None = None
    calibration: dict[str, Any] | None = None


class TeacherIdentity(BaseModel):
    """What a checkpoint says its frozen teachers were; compared with the rebuilt ones."""

    model_config = ConfigDict(strict=True, extra="allow")

    name: str | None = None
    weights: str | None = None
    sha256: str | None = None
    seed: Seed | None = None
    fingerprint: list[Finite] | None = None
    options: dict[str, Any] | None = None


class StoredCheckpoint(BaseModel):
    """A ``model.ckpt`` payload as ``torch.load(weights_only=True)`` returns it. The stored config
    is checked by its family's schema when the model skeleton is built; weights by their shapes."""

    model_config = ConfigDict(strict=True, extra="allow")

    pdd_version: str
    preset: str
    config: dict[str, Any]
    teachers: dict[str, TeacherIdentity]
    meta: CheckpointMeta
