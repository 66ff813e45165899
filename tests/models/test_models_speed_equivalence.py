"""The fast inference path gives the straightforward path's maps and scores (issue 14).

The models run Wide-ResNet channels-last, stop it after layer3 for RD4AD, run conv + BatchNorm
pairs as prepacked oneDNN convolutions (``pdd.packed_convs``) or else route the wide small-grid
convolutions around oneDNN, and compute the cosine map with fewer passes. None of that may change a
result beyond float32 rounding. The reference here is computed independently:
torchvision's own ``wide_resnet50_2`` (NCHW, all four stages) carrying the teacher's weights, the
trainable parts as NCHW copies called module by module with oneDNN as PyTorch chooses it (packing
off), and the anomaly map as ``F.cosine_similarity`` -> bilinear upsampling -> ``scipy.ndimage.gaussian_filter``
in float64. Tolerance: 1e-4 of the reference map's range (maps and scores), on phantom images.
Every BatchNorm's statistics and affine parameters are randomised first, so that folding them into
the convolutions is exercised.

Mutations verified to fail here (each applied to a scratch copy of ``src``): the cosine map scaled
by 1 + 1e-3 in ``anomaly_map.cosine_distance_map``; the in-place level sum keeping only the last
level; the ReLU after ``bn1`` dropped in ``WideResNetFeatures``; its layer4 output scaled by 1.001;
the packed Wide-ResNet's stem without its ReLU; the packed residual blocks without the shortcut.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from float64_reference import randomise_batchnorm
from scipy.ndimage import gaussian_filter
from torch import Tensor
from torchvision.models import wide_resnet50_2

import pdd
from pdd.data.synthetic import make_phantom
from pdd.data.transforms import to_model_input
from pdd.models import AnomalyModel
from pdd.models.pdd import CNN_TEACHER, SSM_TEACHER

SIZE = 64
SMALL_VMAMBA = {"dims": 8, "depths": [1, 1, 1, 1], "ssm_d_state": 4}
RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Big convolutions on the shared 2-core CPU: one thread is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _phantom_batch(size: int) -> Tensor:
    """Two normal phantoms and one with a lesion, as the model sees them."""
    rng = np.random.default_rng(14)
    images = [make_phantom(rng, size, lesion=lesion)[0] for lesion in (False, False, True)]
    return torch.stack([to_model_input(np.repeat(im[..., None], 3, axis=2), size) for im in images])


@pytest.fixture(scope="module")
def phantoms() -> Tensor:
    return _phantom_batch(SIZE)


@pytest.fixture(scope="module")
def torchvision_wrn() -> torch.nn.Module:
    """torchvision's own Wide-ResNet-50-2 (NCHW); each test loads its model's teacher weights."""
    return wide_resnet50_2(weights=None).eval()


def _reference_cnn_features(
    net: torch.nn.Module, model: AnomalyModel, images: Tensor
) -> list[Tensor]:
    """Layer1..4 from torchvision's Wide-ResNet-50-2 (NCHW, oneDNN defaults) with the teacher's weights."""
    state = {
        k: v.contiguous() for k, v in model.teachers[CNN_TEACHER].backbone.state_dict().items()
    }
    net.load_state_dict(state, strict=False)  # fc stays random and unused
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    features = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        features.append(x)
    return features


def _reference_map(
    pairs: Sequence[tuple[Tensor, Tensor]], size: int, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    total = sum(
        F.interpolate(
            1 - F.cosine_similarity(s, t, dim=1).unsqueeze(1),
            size=(size, size),
            mode="bilinear",
            align_corners=True,
        )[:, 0].double()
        for s, t in pairs
    )
    maps = np.stack([gaussian_filter(m, sigma=sigma) for m in total.numpy()])
    return maps, maps.reshape(len(maps), -1).max(axis=1)


def _rd4ad_pairs(
    net: torch.nn.Module, model: AnomalyModel, images: Tensor
) -> list[tuple[Tensor, Tensor]]:
    y1, y2, y3 = _reference_cnn_features(net, model, images)[:3]
    ocbe = model.bottleneck
    x = ocbe.blocks(torch.cat([ocbe.reduce1(y1), ocbe.reduce2(y2), y3], dim=1))
    outputs = []
    for stage in model.decoder:
        x = stage(x)
        outputs.append(x)
    return list(zip(outputs[::-1], [y1, y2, y3]))


def _pdd_pairs(
    net: torch.nn.Module, model: AnomalyModel, images: Tensor
) -> list[tuple[Tensor, Tensor]]:
    y = _reference_cnn_features(net, model, images)
    z = model.teachers[SSM_TEACHER](images)
    f = [
        y[i]
        + F.interpolate(
            model.ina[i](z[i]),
            size=y[i].shape[-2:],
            mode="bilinear",
            align_corners=True,
        )
        for i in range(3)
    ]
    u = y[3] + model.mmu(z[3])
    priors = model.prior(u, [tuple(f[2].shape[-2:]), tuple(f[1].shape[-2:])])
    students = [model.students[0](u), model.students[-1](u, priors)]
    return [(s, t) for student in students for s, t in zip(student, f)]


@pytest.mark.parametrize(
    ("preset", "pairs_of"),
    [("rd4ad", _rd4ad_pairs), ("pdd", _pdd_pairs), ("pdd-reference", _pdd_pairs)],
)
@pytest.mark.parametrize("wide_convs", ["packed", "gemm", "onednn"])
def test_fast_path_matches_straightforward_path(
    preset: str,
    pairs_of: Callable[..., list[tuple[Tensor, Tensor]]],
    phantoms: Tensor,
    torchvision_wrn: torch.nn.Module,
    wide_convs: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Maps and scores of ``model(images)`` equal the reference within 1e-4 of the map range: packed
    (as the models run at CPU inference), and unpacked with the wide small-grid convs on either
    backend (``conv_backend.prefers_gemm``'s two answers)."""
    from pdd import conv_backend

    if wide_convs == "onednn":
        monkeypatch.setattr(conv_backend, "GEMM_MAX_POSITIONS", 0)
    elif wide_convs == "gemm":
        with torch.inference_mode():
            assert conv_backend.prefers_gemm(torch.zeros(len(phantoms), 1, SIZE // 16, SIZE // 16))
    if wide_convs != "packed":
        monkeypatch.setenv("PDD_PACKED_CONVS", "0")
    errors = _errors_against_reference(preset, pairs_of, phantoms, torchvision_wrn, SIZE)
    packs = errors.pop("packs")
    assert (packs > 0) == (wide_convs == "packed")
    assert errors["map"] <= RELATIVE_TOLERANCE, (
        f"{preset}: map error {errors['map']:.2e} of the range"
    )
    assert errors["score"] <= RELATIVE_TOLERANCE, f"{preset}: score error {errors['score']:.2e}"


def test_fast_path_with_winograd_f4x4_matches_straightforward_path(
    torchvision_wrn: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 128 px the Wide-ResNet's 256@16 convolutions run as Winograd F(4x4, 3x3) (at 64 px no
    grid has 16 of its tiles), the fast path's least accurate choice (``pdd.winograd``): maps and
    scores still equal the reference within 1e-4 of the map range."""
    from pdd import winograd

    chosen: list[int | None] = []
    choose = winograd.output_tile

    def spy(conv: torch.nn.Module, size: Sequence[int]) -> int | None:
        chosen.append(choose(conv, size))
        return chosen[-1]

    monkeypatch.setattr(winograd, "output_tile", spy)
    size = 2 * SIZE
    errors = _errors_against_reference(
        "pdd", _pdd_pairs, _phantom_batch(size), torchvision_wrn, size
    )
    assert 4 in chosen and 2 in chosen
    assert errors["map"] <= RELATIVE_TOLERANCE, f"map error {errors['map']:.2e} of the range"
    assert errors["score"] <= RELATIVE_TOLERANCE, f"score error {errors['score']:.2e}"


def _errors_against_reference(
    preset: str,
    pairs_of: Callable[..., list[tuple[Tensor, Tensor]]],
    images: Tensor,
    torchvision_wrn: torch.nn.Module,
    size: int,
) -> dict[str, float]:
    """The largest map and score differences of ``model(images)`` from the reference, as fractions
    of the reference map's range, and how many packed plans the model built."""
    from pdd import packed_convs

    torch.manual_seed(0)
    model = pdd.create_model(
        preset,
        teachers="random",
        image_size=size,
        teacher_options={SSM_TEACHER: SMALL_VMAMBA},
    ).eval()
    randomise_batchnorm(model, seed=7)
    reference_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        maps, scores = model(images)
        packs = sum(len(getattr(m, "_packs", ())) for m in model.modules())
    with torch.inference_mode(), packed_convs.disabled():
        ref_maps, ref_scores = _reference_map(
            pairs_of(torchvision_wrn, reference_model, images),
            size,
            model.config["sigma"],
        )
    scale = ref_maps.max() - ref_maps.min()
    assert scale > 0
    return {
        "map": float(np.abs(maps.double().numpy() - ref_maps).max() / scale),
        "score": float(np.abs(scores.double().numpy() - ref_scores).max() / scale),
        "packs": packs,
    }
