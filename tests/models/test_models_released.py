"""Golden guard: our ``pdd-reference`` computes what the authors' released code computes.

``tests/fixtures/pdd_reference`` holds numbers from the released decoder, loss and evaluator, run on
weights and teacher features given by formulas (its README: the formulas, the released key names,
the tolerances). Here the formulas are regenerated, the weights go through our released-key loader
(``pdd.models.released``) and the teachers are replaced by fixed modules returning the formula
features. Train mode is compared in float64 (the README's advice: float32 is ill-conditioned there),
eval mode in float32.

Mutations run on a scratch copy (never committed) and the tests that failed on each:
- a perturbed feature map (student 1's output x (1 + 1e-4), target f3 x (1 + 1e-5), the prior not
  added before level 2, InA's upsampling with align_corners=False): the train features/loss, the
  gradients and the eval test (the prior one also the BN test);
- a perturbed loss term (L_s2's cos weight x 1.002, L_s1 applied to the prior-fed student, the
  diversity thresholds swapped): ``test_train_features_and_loss_match`` and the gradients;
- the anomaly map (sigma x 1.001, student 1's pairs left out, align_corners=False when upsampling):
  ``test_eval_features_maps_and_scores_match``;
- student 1 run before student 2 in shared mode: ``test_train_bn_running_stats_match``;
- released ``bn1``/``bn2`` mapped to each other's module (same shapes): all four model tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from pdd.errors import CheckpointError
from pdd.models import AnomalyModel, losses
from pdd.models.pdd import CNN_TEACHER, PDD, SSM_TEACHER
from pdd.models.released import (
    load_released_state_dict,
    read_released,
    released_key_map,
)

BATCH, SIZE = 2, 256
Y_SHAPES = [(256, 64, 64), (512, 32, 32), (1024, 16, 16), (2048, 8, 8)]
Z_SHAPES = [(192, 32, 32), (384, 16, 16), (768, 8, 8), (768, 8, 8)]


# --- the README's formulas (section 3) -------------------------------------------------------


def formula_tensor(key: str, shape: Sequence[int], kind: str) -> Tensor:
    """One released state-dict entry from its key name and shape."""
    if kind == "num_batches_tracked":
        return torch.tensor(0, dtype=torch.int64)
    n = math.prod(shape)
    phase = (sum(ord(c) for c in key) % 997) / 997 * 2 * math.pi
    s = torch.sin(0.37 * torch.arange(n, dtype=torch.float64) + phase).reshape(shape)
    value = {
        "conv": lambda: s * (1.0 / math.sqrt(n // shape[0])),
        "bn_weight": lambda: 1 + 0.1 * s,
        "bn_bias": lambda: 0.1 * s,
        "bn_running_mean": lambda: 0.05 * s,
        "bn_running_var": lambda: 1 + 0.1 * (1 + s),
    }[kind]()
    return value.to(torch.float32)


def formula_features(scale: float, shift: float, level: int, shape: Sequence[int]) -> Tensor:
    """y (scale 0.013, shift 0.7, abs x 2) or z (0.017, 0.5) of one level, both samples."""
    t = torch.arange(math.prod(shape), dtype=torch.float64)
    samples = []
    for b in range(BATCH):
        s = torch.sin(scale * t + shift * level + (0.3 if scale == 0.013 else 0.2) * b)
        samples.append((s.abs() * 2 if scale == 0.013 else s).reshape(shape))
    return torch.stack(samples).to(torch.float32)


def teacher_features() -> dict[str, list[Tensor]]:
    return {
        CNN_TEACHER: [formula_features(0.013, 0.7, i + 1, s) for i, s in enumerate(Y_SHAPES)],
        SSM_TEACHER: [formula_features(0.017, 0.5, i + 1, s) for i, s in enumerate(Z_SHAPES)],
    }


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Big convolutions on a shared 2-core CPU run much faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden(fixtures_dir: Path) -> dict[str, Any]:
    return torch.load(fixtures_dir / "pdd_reference" / "golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def released_state(fixtures_dir: Path) -> dict[str, Tensor]:
    keys = json.loads((fixtures_dir / "pdd_reference" / "keys.json").read_text())
    return {key: formula_tensor(key, shape, kind) for key, shape, _, kind in keys["state_dict"]}


@pytest.fixture(scope="module")
def features() -> dict[str, list[Tensor]]:
    return teacher_features()


@pytest.fixture(scope="module")
def reference_model(
    released_state: dict[str, Tensor],
    features: dict[str, list[Tensor]],
    fixed_teacher_model: Callable[..., AnomalyModel],
) -> Callable[[torch.dtype], PDD]:
    """``pdd-reference`` with fixed formula teachers and the formula weights loaded by released
    key, in the given dtype (a fresh model per call)."""

    def build(dtype: torch.dtype) -> PDD:
        model = fixed_teacher_model("pdd-reference", features)
        assert isinstance(model, PDD)
        load_released_state_dict(model, released_state, "formula weights")
        return model.to(dtype)

    return build


def images(dtype: torch.dtype) -> Tensor:
    return torch.zeros(BATCH, 3, SIZE, SIZE, dtype=dtype)  # ignored by the fixed teachers


def assert_stats(ours: Tensor, want: dict[str, Any], i: int, rtol: float, what: str) -> None:
    """Compare sum, sumsq and first32 (scaled by its max |value|) as the README defines them."""
    assert list(ours.shape) == list(want["shape"][i]), what
    flat = ours.detach().double().flatten()
    assert flat.sum().item() == pytest.approx(want["sum"][i].item(), rel=rtol), f"{what}: sum"
    assert (flat**2).sum().item() == pytest.approx(want["sumsq"][i].item(), rel=rtol), (
        f"{what}: sumsq"
    )
    first = want["first32"][i].double()
    scale = first.abs().max().item()
    torch.testing.assert_close(flat[:32] / scale, first / scale, rtol=0, atol=rtol, msg=what)


def nine_outputs(students: Sequence[Sequence[Tensor]], targets: Sequence[Tensor]) -> list[Tensor]:
    """Our tensors in the released ``outputs`` order: prior-fed student, targets, plain student."""
    plain, prior_fed = students
    return [*prior_fed, *targets[:3], *plain]


# --- tests -----------------------------------------------------------------------------------


def test_formula_weights_and_features_match_the_fixture(
    golden: dict[str, Any], released_state: dict[str, Tensor], features: dict[str, list[Tensor]]
) -> None:
    """The generator itself, before any model: guards the test against a wrong formula."""
    check = golden["weight_check"]
    for i, key in enumerate(golden["state_dict"]["keys"]):
        value = released_state[key].double().flatten()
        assert value.sum().item() == pytest.approx(check["sum"][i].item(), rel=1e-12, abs=1e-12)
        first4 = torch.zeros(4, dtype=torch.float64)
        first4[: min(4, value.numel())] = value[:4]
        torch.testing.assert_close(first4, check["first4"][i], rtol=0, atol=0, msg=key)
    for name, teacher in (("y", CNN_TEACHER), ("z", SSM_TEACHER)):
        want = golden["input_check"][name]
        for i, feature in enumerate(features[teacher]):
            assert_stats(feature, want, i, 1e-12, f"{name}{i + 1}")


def test_released_keys_map_one_to_one_with_equal_shapes(
    golden: dict[str, Any],
    released_state: dict[str, Tensor],
    reference_model: Callable[[torch.dtype], PDD],
) -> None:
    """All 210 released tensors land on distinct trainable tensors of the same shape, and back."""
    model = reference_model(torch.float32)
    mapping = released_key_map(model)
    own = model.trainable_state_dict()
    assert sorted(mapping) == sorted(golden["state_dict"]["keys"])
    assert sorted(mapping.values()) == sorted(own)
    for key, ours in mapping.items():
        assert torch.equal(own[ours], released_state[key]), key


@pytest.fixture(scope="module")
def train_run(reference_model: Callable[[torch.dtype], PDD]) -> dict[str, Any]:
    """One train-mode ``loss`` call in float64 and its backward, as the released script's step
    (without the optimizer): the model, the loss terms and the tensors ``loss`` computed."""
    model = reference_model(torch.float64).train()
    run: dict[str, Any] = {"model": model}
    student_features = model.student_features

    def spy(u: Tensor, targets: Sequence[Tensor]) -> list[list[Tensor]]:
        run["targets"], run["students"] = targets, student_features(u, targets)
        return run["students"]

    model.student_features = spy  # type: ignore[method-assign]
    run["terms"] = model.loss(images(torch.float64))
    run["terms"]["loss"].backward()
    return run


def test_train_features_and_loss_match(golden: dict[str, Any], train_run: dict[str, Any]) -> None:
    """Train mode, float64: the nine maps, every loss term and the diversity probe.

    Kills: any perturbed feature map, loss term or loss weight; L_s1/L_s2 on the wrong student.
    """
    want = golden["train_fp64"]
    outputs = nine_outputs(train_run["students"], train_run["targets"])
    for i, (name, ours) in enumerate(zip(golden["feature_names"], outputs, strict=True)):
        assert_stats(ours, want["features"], i, 1e-6, f"train {name}")

    terms, loss = train_run["terms"], want["loss"]
    weight_w = train_run["model"].config["loss"]["w"]
    assert terms["loss_s2"].item() == pytest.approx(loss["l_r_m"], rel=1e-9)
    assert terms["loss_s1"].item() == pytest.approx(loss["l_f_s"], rel=1e-9)
    assert weight_w * terms["loss_div"].item() == pytest.approx(loss["l_s_s"], abs=1e-12)
    assert terms["loss"].item() == pytest.approx(loss["total"], rel=1e-9)
    # The diversity term is exactly 0 with these inputs; the probe exercises it at other thresholds.
    plain, prior_fed = train_run["students"]
    for (tau_low, tau_high), name in (
        ((0.5, 0.999), "DiversityLoss(o[0:3],o[6:9],1,0.5,0.999)"),
        ((0.6, 0.9999), "DiversityLoss(o[0:3],o[6:9],1,0.6,0.9999)"),
    ):
        probe = losses.diversity_loss(plain, prior_fed, tau_low, tau_high)
        assert probe.item() == pytest.approx(want["diversity_probe"][name], rel=1e-9)


def test_train_gradients_match(golden: dict[str, Any], train_run: dict[str, Any]) -> None:
    """The 108 gradient norms, their total and the first values of 10 gradients (float64).

    Kills: a loss term that reaches the wrong parameters (e.g. L_s1 on the prior-fed student).
    """
    want = golden["train_fp64"]
    model = train_run["model"]
    mapping = released_key_map(model)
    params = dict(model.named_parameters())
    norms = torch.stack(
        [params[mapping[name]].grad.double().norm() for name in want["grad_names"]]
    )
    torch.testing.assert_close(norms, want["grad_norm"], rtol=1e-5, atol=0)
    assert norms.norm().item() == pytest.approx(want["grad_norm_total"], rel=1e-5)
    for name, first8 in want["grad_first8"].items():
        grad = params[mapping[name]].grad.flatten()[:8]
        scale = want["grad_norm"][want["grad_names"].index(name)]
        torch.testing.assert_close(grad / scale, first8 / scale, rtol=0, atol=1e-5, msg=name)


def test_train_bn_running_stats_match(golden: dict[str, Any], train_run: dict[str, Any]) -> None:
    """After that one forward, all 34 BatchNorm layers' running stats (float64).

    The shared decoder's layers update twice, prior-fed student first: kills the opposite order.
    """
    want = golden["train_fp64"]
    model = train_run["model"]
    mapping = released_key_map(model)
    own = model.state_dict()
    for i, name in enumerate(want["bn_after_names"]):
        for j, stat in enumerate(("running_mean", "running_var")):
            ours = own[mapping[f"{name}.{stat}"]].double().sum().item()
            assert ours == pytest.approx(want["bn_after_sums"][i, j].item(), rel=1e-9), name
        tracked = own[mapping[f"{name}.num_batches_tracked"]].item()
        assert tracked == want["bn_after_num_batches_tracked"][i], name
    for name, stats in want["bn_after"].items():
        for stat in ("running_mean", "running_var"):
            torch.testing.assert_close(
                own[mapping[f"{name}.{stat}"]], stats[stat], rtol=1e-9, atol=1e-12, msg=name
            )


@pytest.mark.parametrize("packed", [False, True], ids=["modules", "packed"])
def test_eval_features_maps_and_scores_match(
    golden: dict[str, Any], reference_model: Callable[[torch.dtype], PDD], packed: bool
) -> None:
    """Eval mode, float32 (well conditioned; the README's rtol 1e-5): the nine maps (batch of 2),
    the smoothed anomaly maps and the image scores.

    ``modules``: the model's own modules (``pdd.packed_convs`` off): every golden number at 1e-5.
    ``packed``: as the model runs at CPU inference, BatchNorm folded into prepacked convolutions.
    Maps and scores against the golden numbers at 1e-5; the nine features against the modules'
    path over whole tensors, at 1e-5 of each tensor's largest value. (Their golden ``first32``,
    scaled by its own largest value, is at 5e-6 already on the modules' path, and the folding moves
    it by rounding of the size of the fixture's one-ulp float32 sensitivity, 1.5e-6 of a tensor's
    largest value: measured 1.7e-6.)

    Kills: any perturbed feature map; a change to the anomaly map (pairs, upsampling, smoothing).
    """
    from pdd import packed_convs

    want, dtype, rtol = golden["eval_fp32"], torch.float32, 1e-5
    model = reference_model(dtype).eval()
    captured: list[list[tuple[Tensor, Tensor]]] = []
    feature_pairs = model.feature_pairs

    def spy(batch: Tensor) -> list[tuple[Tensor, Tensor]]:
        captured.append(feature_pairs(batch))
        return captured[-1]

    def nine(pairs: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        assert len(pairs) == 6  # 3 levels x 2 students
        students = [[s for s, _ in pairs[:3]], [s for s, _ in pairs[3:]]]
        return nine_outputs(students, [t for _, t in pairs[:3]])

    model.feature_pairs = spy  # type: ignore[method-assign]
    with torch.no_grad(), packed_convs.disabled():
        modules_maps, modules_scores = model(images(dtype))
    with torch.no_grad():
        maps, scores = model(images(dtype))
    modules_outputs, outputs = nine(captured[0]), nine(captured[1])
    packs = sum(len(getattr(m, "_packs", ())) for m in model.modules())
    assert (packs > 0) == packed_convs.enabled(), "the packed path should be taken"
    if not packed:
        outputs, maps, scores = modules_outputs, modules_maps, modules_scores
        for i, (name, ours) in enumerate(zip(golden["feature_names"], outputs, strict=True)):
            assert_stats(ours, want["features_batch2"], i, rtol, f"eval {name}")
    else:
        for name, ours, theirs in zip(golden["feature_names"], outputs, modules_outputs, strict=True):
            err = ((ours - theirs).abs().max() / theirs.abs().max()).item()
            assert err <= rtol, f"eval {name}: packed differs by {err:.2e} of the largest value"
    scale = want["maps"].abs().max().item()
    err = (maps.double() - want["maps"]).abs().max().item() / scale
    assert err <= rtol, f"anomaly maps differ: max relative error {err:.2e} > {rtol:g}"
    torch.testing.assert_close(scores.double(), want["scores"], rtol=rtol, atol=0)


# --- the loader's strictness and file reading ------------------------------------------------


def test_loader_refuses_missing_unexpected_and_misshaped_keys(
    released_state: dict[str, Tensor], reference_model: Callable[[torch.dtype], PDD]
) -> None:
    """Each problem is a CheckpointError naming the file and the first released key; nothing loads."""
    model = reference_model(torch.float32)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    zeros = {k: torch.zeros_like(v) for k, v in released_state.items()}
    missing = {k: v for k, v in zeros.items() if k != "up_dim_v_r2.bn3.running_var"}
    unexpected = {**zeros, "layer4.0.conv1.weight": torch.zeros(1)}
    misshaped = {**zeros, "mlp.branch2.weight": torch.zeros(256, 1024, 1, 1)}
    for state, message in (
        (missing, "run.pth: not a released PDD decoder: missing keys up_dim_v_r2.bn3.running_var"),
        (unexpected, "run.pth: not a released PDD decoder: unexpected keys layer4.0.conv1.weight"),
        (
            misshaped,
            "run.pth: not a released PDD decoder: wrong shape keys mlp.branch2.weight "
            "[256, 1024, 1, 1] (expected [512, 1024, 1, 1])",
        ),
    ):
        with pytest.raises(CheckpointError) as err:
            load_released_state_dict(model, state, "run.pth")
        assert str(err.value) == message
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(value, before[key]), key


def test_loader_needs_the_released_architecture(
    released_state: dict[str, Tensor],
    features: dict[str, list[Tensor]],
    fixed_teacher_model: Callable[..., AnomalyModel],
) -> None:
    """Separate students (the ``pdd`` preset) have no released counterpart: a clear error."""
    model = fixed_teacher_model("pdd", features)
    with pytest.raises(CheckpointError, match="pdd model has no released counterpart for students.1"):
        load_released_state_dict(model, released_state, "run.pth")


def test_read_released_unwraps_the_training_file(tmp_path: Path) -> None:
    """The released script saves decoder, optimizer and scheduler state; DDP may prefix keys."""
    decoder = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=2e-3, betas=(0.5, 0.999))
    decoder[0](torch.ones(1, 2, 2, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40, eta_min=2e-4)
    path = tmp_path / "epoch_10_auc=0.9.pth"
    state = {f"module.{k}": v for k, v in decoder.state_dict().items()}
    torch.save(
        {"decoder": state, "optimizer": optimizer.state_dict(),
         "scheduler": scheduler.state_dict(), "epoch": 9},  # fmt: skip
        path,
    )
    loaded = read_released(path)
    assert sorted(loaded) == sorted(decoder.state_dict())
    for key, value in decoder.state_dict().items():
        assert torch.equal(loaded[key], value), key
    bare = tmp_path / "bare.pth"
    torch.save(decoder.state_dict(), bare)
    assert sorted(read_released(bare)) == sorted(decoder.state_dict())


class _Payload:
    """Not a tensor type: unpickling it would import and construct a Python object."""


def test_read_released_refuses_unsafe_and_broken_files(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"decoder": {"x": torch.zeros(1)}, "extra": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.pth: not a safe checkpoint") as err:
        read_released(evil)
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
    truncated = tmp_path / "cut.pth"
    torch.save({"decoder": {"x": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pth: checkpoint is truncated or corrupted"):
        read_released(truncated)
    with pytest.raises(CheckpointError, match="gone.pth: released checkpoint not found"):
        read_released(tmp_path / "gone.pth")
    for name, payload, message in (
        ("tensor.pth", torch.zeros(2), "not a released PDD checkpoint"),
        ("epoch.pth", {"decoder": {"w": torch.zeros(1), "epoch": 3}}, "entry 'epoch' is a int"),
    ):
        torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name}: .*{message}"):
            read_released(tmp_path / name)
