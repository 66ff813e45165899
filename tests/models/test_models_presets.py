"""Every preset end to end on small inputs: shapes, training step, frozen teachers, ablation wiring.

Most tests use a small VMamba (``teacher_options``) so the file stays fast on a CPU; the wiring of
PDD does not depend on its width. One test builds the real VMamba-Tiny layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from pdd import create_model, list_presets
from pdd.errors import CheckpointError, WeightsError
from pdd.models import AnomalyModel
from pdd.models.pdd import PDD, Student
from pdd.models.size import check_parameter_budget

SMALL_VMAMBA = {"dims": 8, "depths": [1, 1, 1, 1], "ssm_d_state": 4}
SMALL = {
    "teachers": "random",
    "image_size": 64,
    "teacher_options": {"vmamba_tiny_v0": SMALL_VMAMBA},
}
PRESETS = list_presets()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Big convolutions on a shared 2-core CPU run ~10x faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict[str, AnomalyModel]:
    """The last ``KEEP_MODELS`` models built, shared by this file's tests."""
    return {}


KEEP_MODELS = 2  # built models kept for later tests; a test holds what it uses itself


def get(models: dict[str, AnomalyModel], preset: str) -> AnomalyModel:
    if preset not in models:
        while len(models) >= KEEP_MODELS:
            models.pop(next(iter(models)))
        models[preset] = create_model(preset, **SMALL)
    return models[preset]


@pytest.fixture(scope="module", params=PRESETS)
def preset_model(
    request: pytest.FixtureRequest, models: dict[str, AnomalyModel]
) -> Iterator[AnomalyModel]:
    """Each preset's model for the per-preset tests, freed after them: pytest runs all tests of
    one module-scoped parameter before building the next, so ten models never live at once (they
    took the suite's peak to 8.5 GB)."""
    yield get(models, request.param)
    models.pop(request.param, None)


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def test_output_shapes_small_and_256(preset_model: AnomalyModel) -> None:
    model = preset_model.eval()
    with torch.no_grad():
        for batch, size in ((2, 64), (1, 256)):
            maps, scores = model(torch.randn(batch, 3, size, size))
            assert maps.shape == (batch, size, size) and scores.shape == (batch,)
            assert torch.isfinite(maps).all()
            torch.testing.assert_close(scores, maps.flatten(1).amax(1))


def test_training_step(preset_model: AnomalyModel) -> None:
    """Every trainable parameter gets a gradient; one Adam step moves them and never the teachers."""
    model = preset_model.train()
    teacher_state = {k: v.clone() for k, v in model.teachers.state_dict().items()}
    params = trainable(model)
    assert params and all(not name.startswith("teachers.") for name in params)
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    terms = model.loss(torch.randn(2, 3, 64, 64))
    config = model.config
    if config["family"] == "pdd":
        expected_total = (
            terms["loss_s2"]
            + terms.get("loss_s1", 0)
            + config["loss"]["w"] * terms.get("loss_div", 0)
        )
        torch.testing.assert_close(terms["loss"], expected_total)
    terms["loss"].backward()
    no_grad = [
        n
        for n, p in params.items()
        if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()
    ]
    assert not no_grad, f"no gradient: {no_grad[:5]}"
    optimizer.step()
    assert all(not torch.equal(p, before[n]) for n, p in params.items())
    for key, value in model.teachers.state_dict().items():
        assert torch.equal(value, teacher_state[key]), key
    assert all(
        not m.training for teacher in model.teachers.values() for m in teacher.modules()
    )
    assert all(not p.requires_grad for p in model.teachers.parameters())
    model.zero_grad(set_to_none=True)


def test_loss_terms_per_preset(models: dict[str, AnomalyModel]) -> None:
    x = torch.randn(2, 3, 64, 64)
    expected = {
        "pdd": {"loss", "loss_s1", "loss_s2", "loss_div"},
        "pdd-no-div": {"loss", "loss_s1", "loss_s2"},
        "pdd-one-student": {"loss", "loss_s2"},
        "rd4ad": {"loss"},
    }
    for preset, keys in expected.items():
        assert set(get(models, preset).loss(x)) == keys, preset


def test_shared_and_separate_students(models: dict[str, AnomalyModel]) -> None:
    separate, shared = get(models, "pdd"), get(models, "pdd-reference")
    assert isinstance(separate, PDD) and isinstance(shared, PDD)
    assert len(separate.students) == 2 and len(shared.students) == 1
    first, second = (set(map(id, s.parameters())) for s in separate.students)
    assert not first & second
    student_size = sum(p.numel() for p in separate.students[0].parameters())
    assert (
        sum(p.numel() for p in trainable(separate).values())
        - sum(p.numel() for p in trainable(shared).values())
        == student_size
    )
    x = torch.randn(1, 3, 64, 64)
    for model, same in ((shared, True), (separate, False)):
        model.eval()
        with torch.no_grad():
            f, u = model.targets(x)
            s1, s2 = model.student_features(u, f)
        assert (
            torch.equal(s1[2], s2[2]) is same
        )  # level 3 sees no prior: equal only if shared
        assert not torch.equal(
            s1[0], s2[0]
        )  # the prior makes level 1 differ either way


def test_ablations_remove_what_they_name(models: dict[str, AnomalyModel]) -> None:
    # Each model is looked at and let go (``get`` keeps the last two): six at once took 3 GB.
    full = get(models, "pdd")
    assert set(full.teachers) == {"wide_resnet50_2", "vmamba_tiny_v0"}
    assert full.ina is not None and full.mmu is not None and full.prior is not None
    del full

    one_teacher = get(models, "pdd-one-teacher")
    assert set(one_teacher.teachers) == {"wide_resnet50_2"}
    assert one_teacher.ina is None and one_teacher.mmu is None
    del one_teacher

    no_ina = get(models, "pdd-no-ina")
    assert no_ina.ina is None and no_ina.mmu is not None
    x = torch.randn(1, 3, 64, 64)
    no_ina.eval()
    with torch.no_grad():
        targets, _ = no_ina.targets(x)
        y = no_ina.teachers["wide_resnet50_2"](x)
    assert all(torch.equal(f, t) for f, t in zip(targets, y[:3]))
    del no_ina, targets, y

    no_mpa = get(models, "pdd-no-mpa")
    assert no_mpa.prior is None and not any("prior" in n for n in no_mpa.state_dict())
    assert len(no_mpa.students) == 2
    del no_mpa

    one_student = get(models, "pdd-one-student")
    assert len(one_student.students) == 1 and one_student.prior is not None
    assert isinstance(one_student.students[0], Student)
    del one_student
    chain_step = get(models, "pdd-one-student-no-mpa")
    assert len(chain_step.students) == 1 and chain_step.prior is None
    del chain_step

    # Trainable sizes from meta-device skeletons (shapes only, no memory).
    sizes = {
        p: sum(t.numel() for t in trainable(check_parameter_budget(p, SMALL)).values())
        for p in PRESETS
    }
    assert sizes["pdd-one-student-no-mpa"] < sizes["pdd-one-student"] < sizes["pdd"]
    assert sizes["pdd-no-div"] == sizes["pdd"]


def test_checkpoint_round_trip_and_teacher_identity(
    models: dict[str, AnomalyModel],
) -> None:
    model = get(models, "pdd-reference").eval()
    state = model.trainable_state_dict()
    assert state and not any(k.startswith("teachers.") for k in state)
    rebuilt = create_model(**model.config).eval()
    rebuilt.load_trainable_state_dict(state)
    rebuilt.check_teacher_identity(model.teacher_identity())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="missing keys"):
        rebuilt.load_trainable_state_dict(
            {k: v for k, v in state.items() if "prior" not in k}
        )
    other_seed = create_model(**{**model.config, "teacher_seed": 1})
    with pytest.raises(CheckpointError, match="teacher .* differs"):
        other_seed.check_teacher_identity(model.teacher_identity())


def test_real_vmamba_tiny_layout() -> None:
    model = create_model("pdd", teachers="random", image_size=64)
    assert model.teachers["vmamba_tiny_v0"].channels == (192, 384, 768, 768)
    assert isinstance(model, PDD) and model.ina is not None and model.mmu is not None
    assert [a.project.in_channels for a in model.ina] == [192, 384, 768]
    with torch.no_grad():
        maps, scores = model.eval()(torch.randn(1, 3, 64, 64))
    assert maps.shape == (1, 64, 64) and scores.shape == (1,)


def test_pretrained_teachers_missing_says_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="pdd weights download"):
        create_model("rd4ad")


def test_explicit_teacher_weights_file(tmp_path: Path) -> None:
    from pdd import teachers

    path = tmp_path / "wrn.pth"
    torch.save(teachers.build("wide_resnet50_2", seed=11).backbone.state_dict(), path)
    model = create_model(
        "rd4ad", teachers="pretrained", teacher_weights={"wide_resnet50_2": str(path)}
    )
    identity = model.teacher_identity()["wide_resnet50_2"]
    assert identity["weights"] == "wrn.pth" and len(identity["sha256"]) == 64


def test_decoder_and_bottleneck_layout(models: dict[str, AnomalyModel]) -> None:
    from pdd.models.rd4ad import RD4AD

    rd4ad = get(models, "rd4ad").eval()
    assert isinstance(rd4ad, RD4AD)
    assert [len(stage) for stage in rd4ad.decoder] == [3, 4, 6]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = rd4ad.teachers["wide_resnet50_2"](x)[:3]
        embedding = rd4ad.bottleneck(y)
        pairs = rd4ad.feature_pairs(x)
    assert embedding.shape == (1, 2048, 2, 2)  # 2048 channels at stride 32
    assert [tuple(s.shape) for s, _ in pairs] == [tuple(t.shape) for t in y]

    pdd = get(models, "pdd")
    assert isinstance(pdd, PDD)
    for student in pdd.students:
        assert [len(student.level3), len(student.level2), len(student.level1)] == [
            2,
            2,
            2,
        ]
    assert isinstance(pdd.prior, nn.Module) and [
        h.out_channels for h in pdd.prior.heads
    ] == [1024, 512]
