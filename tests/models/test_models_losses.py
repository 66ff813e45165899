"""Loss terms on small hand-made tensors with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pdd.models import losses


def vec(*rows: tuple[float, ...]) -> torch.Tensor:
    """One feature map per row: [B, C, 1, 1]."""
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), -1, 1, 1)


def test_sample_cosine_flattens_each_sample() -> None:
    # One channel, two positions: per-position cosines would both be 1; the flattened one is 0.6.
    a = torch.tensor([3.0, 1.0], dtype=torch.float64).view(1, 1, 2, 1)
    b = torch.tensor([1.0, 3.0], dtype=torch.float64).view(1, 1, 2, 1)
    assert losses.sample_cosine(a, b).item() == pytest.approx(0.6)
    cos = losses.sample_cosine(vec((1, 0), (1, 1)), vec((0, 1), (2, 2)))
    torch.testing.assert_close(cos, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_student1_loss_is_weighted_sum_of_mse() -> None:
    students = [torch.ones(1, 1, 2, 2), 2 * torch.ones(1, 3, 1, 1)]
    targets = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 1, 1)]
    assert losses.student1_loss(students, targets, a=0.5).item() == pytest.approx(
        0.5 * (1 + 4)
    )


@pytest.mark.parametrize(
    ("cos_term", "expected"),
    [
        # a * (MSE 1 + MSE 0.5) + b * ((1 - 0) + (1 - 1/sqrt2))
        ("one_minus", 0.1 * 1.5 + 0.2 * (1 + 1 - 1 / math.sqrt(2))),
        # a * (MSE 1 + MSE 0.5) + b * (0 + 1/sqrt2)
        ("plus", 0.1 * 1.5 + 0.2 * (1 / math.sqrt(2))),
    ],
)
def test_student2_loss_both_readings(cos_term: losses.CosTerm, expected: float) -> None:
    students = [vec((1, 0)), vec((1, 1))]
    targets = [vec((0, 1)), vec((1, 0))]
    value = losses.student2_loss(students, targets, a=0.1, b=0.2, cos_term=cos_term)
    assert value.item() == pytest.approx(expected)


def test_student2_loss_rejects_unknown_reading() -> None:
    with pytest.raises(ValueError, match="cos_term"):
        losses.student2_loss([vec((1, 0))], [vec((1, 0))], 0.1, 0.2, "minus")  # type: ignore[arg-type]


def test_diversity_hinges() -> None:
    first = [vec((1, 0), (1, 0)), vec((1, 0), (1, 0)), vec((1, 0), (1, 0))]
    second = [
        vec(
            (1, 0), (0, 1)
        ),  # level 1: cos 1 (above tau_low, penalised 0.25) and cos 0 (free)
        vec(
            (0, 1), (2, 0)
        ),  # level 2: cos 0 (below tau_high, penalised 0.3) and cos 1 (free)
        vec((-1, 0), (-3, 0)),  # level 3: cos -1 twice, penalised 1.3 each
    ]
    value = losses.diversity_loss(first, second, tau_low=0.75, tau_high=0.3)
    assert value.item() == pytest.approx(0.25 / 2 + 0.3 / 2 + 1.3)


def test_diversity_zero_inside_both_margins() -> None:
    first = [vec((1, 0)), vec((1, 0)), vec((1, 0))]
    second = [
        vec((1, 1)),
        vec((1, 1)),
        vec((1, 1)),
    ]  # cos 0.707: below 0.75 and above 0.3
    assert (
        losses.diversity_loss(first, second, tau_low=0.75, tau_high=0.3).item() == 0.0
    )


def test_rd4ad_loss_sums_levels_of_mean_one_minus_cos() -> None:
    students = [vec((1, 0), (1, 1)), vec((1, 0), (1, 0))]
    targets = [vec((0, 1), (2, 2)), vec((-1, 0), (5, 0))]
    # level 1: mean(1 - 0, 1 - 1) = 0.5; level 2: mean(1 - (-1), 1 - 1) = 1
    assert losses.rd4ad_loss(students, targets).item() == pytest.approx(1.5)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="level 1"):
        losses.student1_loss([torch.zeros(1, 2, 2, 2)], [torch.zeros(1, 2, 4, 4)], 1.0)


def test_sample_cosine_gradient_passes_gradcheck() -> None:
    """The hand-written backward against finite differences, in float64."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 5, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, 4, 5, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(losses.sample_cosine, (a, b))


@pytest.mark.parametrize("channels_last", [False, True])
def test_sample_cosine_matches_torch_cosine_forward_and_backward(
    channels_last: bool,
) -> None:
    """Value and both gradients equal ``F.cosine_similarity`` on flattened maps, including a
    sample whose first map is all zeros (its norm clamped at eps, as torch clamps it)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 8, 6, 6, generator=gen)
    b = torch.randn(4, 8, 6, 6, generator=gen)
    a[2] = 0.0
    if channels_last:
        a = a.to(memory_format=torch.channels_last)
        b = b.to(memory_format=torch.channels_last)
    weights = torch.randn(4, generator=gen)

    def value_and_grads(cosine):  # type: ignore[no-untyped-def]
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        value = cosine(x, y)
        (value * weights).sum().backward()
        return value.detach(), x.grad, y.grad

    ours = value_and_grads(losses.sample_cosine)
    reference = value_and_grads(
        lambda x, y: torch.nn.functional.cosine_similarity(
            x.flatten(1), y.flatten(1), dim=1
        )
    )
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert ours[0][2].item() == 0.0


def test_sample_cosine_below_eps_has_no_gradient_through_the_norm() -> None:
    """|a| < eps: cos = <a, b> / (eps |b|) with a constant denominator, so d cos / d a is
    b / (eps |b|) by hand (torch's own cosine gives another value there)."""
    b = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    a = torch.tensor([[2e-9, -1e-9]], dtype=torch.float64, requires_grad=True)
    b.requires_grad_()
    cos = losses.sample_cosine(a, b)
    cos.sum().backward()
    assert cos.item() == pytest.approx((6e-9 - 4e-9) / (1e-8 * 5.0))
    torch.testing.assert_close(a.grad, b.detach() / (1e-8 * 5.0))
    # d cos / d b keeps its own-norm term: b's norm is not clamped.
    expected_b = a.detach() / (1e-8 * 5.0) - cos.detach() * b.detach() / 25.0
    torch.testing.assert_close(b.grad, expected_b)


def test_sample_cosine_rejects_maps_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        losses.sample_cosine(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
