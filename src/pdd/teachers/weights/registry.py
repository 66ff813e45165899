"""The registry of the teachers' official weight files: where each is, what it must hash to.

Where each registry hash comes from (all are full SHA-256 digests of the published file):

- ``wide_resnet50_2.racm_in1k``: the Git LFS object id of ``model.safetensors`` on the Hugging
  Face hub (revision pinned in the URL), as recorded by several independent public projects.
- ``wide_resnet50_2.tv_in1k`` / ``tv2_in1k``: torchvision's file names carry the first 8 hex
  digits of the SHA-256; the full digests, which start with those digits, are recorded by several
  public projects that verified the download.
- ``vmamba_tiny_v0.in1k``: the VMamba release gives no hash; the digest is the one a public
  project recorded for its verified download (size 91,649,482 bytes, which fits the 22.9 M float32
  parameters of the documented state dict).

A spec with ``sha256=None`` is trusted on first use (see :mod:`.manifest`).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

from pdd.errors import WeightsError

__all__ = [
    "DEFAULT_WEIGHTS",
    "WEIGHTS",
    "TeacherName",
    "WeightFormat",
    "WeightSpec",
    "fetch_hint",
    "get_spec",
    "upstream_name",
]

TeacherName = Literal["wide_resnet50_2", "vmamba_tiny_v0"]
WeightFormat = Literal["pth", "safetensors"]
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class WeightSpec:
    """One published weight file: where it is, what it must hash to, which teacher it fits."""

    name: str
    teacher: TeacherName
    url: str
    filename: str
    sha256: str | None
    source: str
    format: WeightFormat
    # Where ``sha256`` was read, so a reviewer can check it (torchvision: also the file name's prefix).
    digest_source: str = ""

    def __post_init__(self) -> None:
        if self.sha256 is not None and (len(self.sha256) != 64 or not set(self.sha256) <= _HEX):
            raise ValueError(f"{self.name}: sha256 must be 64 lower-case hex digits or None")


WEIGHTS: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="wide_resnet50_2.racm_in1k",
            teacher="wide_resnet50_2",
            url=(
                "https://huggingface.co/timm/wide_resnet50_2.racm_in1k/resolve/"
                "30f73aceaaa1911830a9795b83ab1908dba18719/model.safetensors"
            ),
            filename="wide_resnet50_2.racm_in1k.safetensors",
            sha256="03b71d65fb2c73bb0de079a1781009f27a782ec481d2f64ab3bde9b1cdec3000",
            source=(
                "timm (Ross Wightman), ImageNet-1k, RandAugment + cosine recipe; the PDD authors' "
                "teacher; Apache-2.0; hash = Hugging Face LFS oid of model.safetensors "
                "(275,835,296 bytes)"
            ),
            format="safetensors",
            digest_source=(
                "the Git LFS pointer of model.safetensors on the Hugging Face hub at the pinned "
                "revision (shown as 'SHA256' on huggingface.co/timm/wide_resnet50_2.racm_in1k/blob/"
                "30f73aceaaa1911830a9795b83ab1908dba18719/model.safetensors); the same digest is "
                "recorded in several independent public projects' weight manifests"
            ),
        ),
        WeightSpec(
            name="wide_resnet50_2.tv_in1k",
            teacher="wide_resnet50_2",
            url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
            filename="wide_resnet50_2-95faca4d.pth",
            sha256="95faca4d11227dddf8633dbb5ff6c8a9003c1aa5b8945c73834b8007b10950b8",
            source=(
                "torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V1, BSD-3-Clause; hash prefix "
                "95faca4d from the file name, full digest as publicly recorded (138,223,492 bytes)"
            ),
            format="pth",
            digest_source=(
                "prefix 95faca4d: torchvision's file name (checked by the test suite); full "
                "digest: as recorded by several independent public projects that hashed this "
                "download (PyTorch publishes only the prefix)"
            ),
        ),
        WeightSpec(
            name="wide_resnet50_2.tv2_in1k",
            teacher="wide_resnet50_2",
            url="https://download.pytorch.org/models/wide_resnet50_2-9ba9bcbe.pth",
            filename="wide_resnet50_2-9ba9bcbe.pth",
            sha256="9ba9bcbebc349d733a72eb7608143fd754e4689ac8d8ce2916ca0bdff6443950",
            source=(
                "torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V2, BSD-3-Clause; hash prefix "
                "9ba9bcbe from the file name, full digest as publicly recorded"
            ),
            format="pth",
            digest_source=(
                "prefix 9ba9bcbe: torchvision's file name (checked by the test suite); full "
                "digest: as recorded by several independent public projects that hashed this "
                "download (PyTorch publishes only the prefix)"
            ),
        ),
        WeightSpec(
            name="vmamba_tiny_v0.in1k",
            teacher="vmamba_tiny_v0",
            url=(
                "https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/"
                "vssmtiny_dp01_ckpt_epoch_292.pth"
            ),
            filename="vssmtiny_dp01_ckpt_epoch_292.pth",
            sha256="dbc0cc4f5ec0e45db5fba7c939d2c7d9b617e891ac10766912a8d604c37c5e47",
            source=(
                "VMamba release #v0cls (Vanilla-VMamba-T, 82.2% top-1), MIT; the release publishes "
                "no hash, digest as publicly recorded (91,649,482 bytes); state dict under 'model'"
            ),
            format="pth",
            digest_source=(
                "the VMamba release page publishes no hash; digest as recorded by independent "
                "public projects for their verified download of this URL (91,649,482 bytes); "
                "it cannot be checked against the publisher"
            ),
        ),
    )
}


DEFAULT_WEIGHTS: dict[str, str] = {
    "wide_resnet50_2": "wide_resnet50_2.racm_in1k",
    "vmamba_tiny_v0": "vmamba_tiny_v0.in1k",
}


def get_spec(name: str) -> WeightSpec:
    """The registry entry ``name``, or a one-line error listing the known names."""
    try:
        return WEIGHTS[name]
    except KeyError:
        known = ", ".join(sorted(WEIGHTS))
        raise WeightsError(f"unknown weights '{name}'; known: {known}") from None


def upstream_name(spec: WeightSpec) -> str:
    """The file name the publisher uses (what a user who fetched it by hand will have)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(spec.url).path.rsplit("/", 1)[-1])


def fetch_hint(spec: WeightSpec) -> str:
    return (
        f"run `pdd weights download {spec.name}` (online) or "
        f"`pdd weights import {spec.name} /path/to/{upstream_name(spec)}` (offline)"
    )
