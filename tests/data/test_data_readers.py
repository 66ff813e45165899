"""Readers: every supported format gives float32 HxWx3 in [0, 1]; every bad file a one-line DataError."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from pdd.data import (
    MAX_PIXELS,
    image_from_array,
    nifti_slice_count,
    read_image,
    read_mask,
)
from pdd.data.readers import image_format
from pdd.data.synthetic import write_dicom, write_nifti
from pdd.errors import DataError


def _ramp(h: int = 32, w: int = 48) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


def _check_rgb(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.dtype == np.float32
    assert image.shape == (*shape, 3)
    assert image.min() >= 0.0 and image.max() <= 1.0


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims a huge size: what a decompression bomb looks like before decoding."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
    return path


# --- raster formats ---------------------------------------------------------------------------


def test_grey_png_8bit_is_scaled_by_255_and_replicated(tmp_path: Path) -> None:
    pixels = _ramp()
    Image.fromarray(pixels).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    _check_rgb(image, pixels.shape)
    np.testing.assert_allclose(image[..., 0], pixels / 255.0, atol=1e-6)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_png_16bit_uses_full_16bit_range(tmp_path: Path) -> None:
    pixels = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    image = read_image(tmp_path / "g16.png")
    _check_rgb(image, (32, 32))
    np.testing.assert_allclose(image[..., 1], pixels / 65535.0, atol=1e-6)


def test_rgba_png_drops_alpha_and_keeps_colour(tmp_path: Path) -> None:
    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 255, 128, 0, 7
    Image.fromarray(rgba).save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    _check_rgb(image, (16, 20))
    np.testing.assert_allclose(image[0, 0], [1.0, 128 / 255, 0.0], atol=1e-6)


@pytest.mark.parametrize("kind", ["grey16", "rgb8"])
def test_array_reads_like_the_same_pixels_saved_as_png(tmp_path: Path, kind: str) -> None:
    """``image_from_array`` and ``read_image`` give identical numbers, so in-process scoring of an
    array equals ``pdd predict`` of its PNG (a 12-bit CT in 16-bit storage stays dark: /65535)."""
    rng = np.random.default_rng(0)
    if kind == "grey16":
        pixels = rng.integers(0, 4096, (24, 40), dtype=np.uint16)
    else:
        pixels = rng.integers(20, 200, (24, 40, 3), dtype=np.uint8)  # not the full range
    Image.fromarray(pixels).save(tmp_path / "p.png")
    from_file = read_image(tmp_path / "p.png")
    from_array = image_from_array(pixels)
    _check_rgb(from_array, (24, 40))
    np.testing.assert_array_equal(from_array, from_file)
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    np.testing.assert_allclose(from_array, rgb / np.iinfo(pixels.dtype).max, atol=1e-6)


def test_png_named_jpg_is_read_by_content(tmp_path: Path) -> None:
    pixels = _ramp()
    Image.fromarray(pixels).save(tmp_path / "real.png")
    (tmp_path / "fake.jpg").write_bytes((tmp_path / "real.png").read_bytes())
    assert image_format(tmp_path / "fake.jpg") == "png"
    np.testing.assert_array_equal(
        read_image(tmp_path / "fake.jpg"), read_image(tmp_path / "real.png")
    )


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("BMP", ".bmp")])
def test_jpeg_and_bmp(tmp_path: Path, fmt: str, suffix: str) -> None:
    smooth = np.tile(np.linspace(0, 255, 48), (32, 1)).astype(np.uint8)
    rgb = np.stack([smooth, 255 - smooth, np.full((32, 48), 90, np.uint8)], axis=2)
    Image.fromarray(rgb).save(
        tmp_path / f"x{suffix}", format=fmt, **({"quality": 95} if fmt == "JPEG" else {})
    )
    image = read_image(tmp_path / f"x{suffix}")
    _check_rgb(image, (32, 48))
    tolerance = 0.02 if fmt == "JPEG" else 1e-6
    assert np.abs(image - rgb / 255.0).mean() < tolerance


def test_tiff_uint16_float_and_rgb(tmp_path: Path) -> None:
    grey16 = (np.arange(24 * 24).reshape(24, 24) * 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", grey16)
    np.testing.assert_allclose(
        read_image(tmp_path / "g16.tif")[..., 0], grey16 / 65535.0, atol=1e-6
    )

    unit = np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)
    tifffile.imwrite(tmp_path / "f.tiff", unit)
    np.testing.assert_allclose(read_image(tmp_path / "f.tiff")[..., 0], unit, atol=1e-6)

    wide = np.linspace(-500, 1500, 24 * 24, dtype=np.float32).reshape(24, 24)
    tifffile.imwrite(tmp_path / "w.tif", wide)
    scaled = read_image(tmp_path / "w.tif")[..., 0]
    assert scaled.min() == 0.0 and scaled.max() == pytest.approx(1.0)

    rgb = np.dstack([np.full((24, 24), v, np.uint8) for v in (10, 20, 30)])
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    np.testing.assert_allclose(
        read_image(tmp_path / "c.tif")[0, 0], np.array([10, 20, 30]) / 255.0, atol=1e-6
    )


# --- DICOM ------------------------------------------------------------------------------------------


def test_dicom_rescale_and_first_window_value(tmp_path: Path) -> None:
    stored = (np.arange(32 * 32).reshape(32, 32) * 3).astype(np.uint16)
    path = write_dicom(
        tmp_path / "ct.dcm",
        stored,
        slope=2.0,
        intercept=-1024.0,
        window=[(40.0, 400.0), (0.0, 2000.0)],
    )
    hu = stored * 2.0 - 1024.0
    expected = np.clip((hu - (40.0 - 200.0)) / 400.0, 0, 1)
    image = read_image(path)
    _check_rgb(image, (32, 32))
    np.testing.assert_allclose(image[..., 0], expected, atol=1e-6)


def test_dicom_window_argument_overrides_file(tmp_path: Path) -> None:
    stored = (np.arange(32 * 32).reshape(32, 32)).astype(np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, window=(40.0, 400.0))
    expected = np.clip((stored - (500.0 - 50.0)) / 100.0, 0, 1)
    np.testing.assert_allclose(read_image(path, window=(500.0, 100.0))[..., 0], expected, atol=1e-6)


def test_dicom_without_window_is_min_max(tmp_path: Path) -> None:
    stored = (np.arange(32 * 32).reshape(32, 32) + 100).astype(np.uint16)
    image = read_image(write_dicom(tmp_path / "ct.dcm", stored))
    np.testing.assert_allclose(image[..., 0], (stored - 100.0) / (stored.max() - 100.0), atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = (np.arange(32 * 32).reshape(32, 32)).astype(np.uint16)
    normal = read_image(write_dicom(tmp_path / "m2.dcm", stored))
    inverted = read_image(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


def test_dicom_without_preamble_is_recognised_by_extension(tmp_path: Path) -> None:
    stored = (np.arange(32 * 32).reshape(32, 32)).astype(np.uint16)
    full = write_dicom(tmp_path / "full.dcm", stored)
    ds = pydicom.dcmread(full)
    ds.preamble = None
    del ds.file_meta
    raw = tmp_path / "raw.dcm"
    ds.save_as(raw, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_image(raw), read_image(full), atol=1e-6)


def test_dicom_constant_image_is_all_zeros(tmp_path: Path) -> None:
    image = read_image(write_dicom(tmp_path / "flat.dcm", np.full((16, 16), 7, np.uint16)))
    assert image.shape == (16, 16, 3) and not image.any()


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((16, 16), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(err.value) == f"{path}: DICOM file has no pixel data"


def test_dicom_with_nan_pixels(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nan.dcm", np.zeros((16, 16), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    values = np.ones((16, 16), np.float32)
    values[4, 4] = np.nan
    ds.FloatPixelData = values.tobytes()
    ds.save_as(path)
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(err.value) == f"{path}: DICOM pixel data contains NaN or infinite values"


# --- NIfTI ------------------------------------------------------------------------------------------


def _display_slices(n: int = 3, h: int = 20, w: int = 24) -> list[np.ndarray]:
    """Slices with a distinct level each and a marker in the top-left corner (tests orientation)."""
    slices = []
    for k in range(n):
        plane = np.full((h, w), 100.0 * (k + 1), np.float32)
        plane[:3, :5] = 1000.0
        slices.append(plane)
    return slices


def test_nifti_axial_slices_orientation_and_count(tmp_path: Path) -> None:
    slices = _display_slices()
    ras = np.stack([np.rot90(s, k=-1) for s in slices], axis=2)  # reader shows rot90(vol[:, :, k])
    path = write_nifti(tmp_path / "v.nii.gz", ras)
    assert nifti_slice_count(path) == 3
    for k in range(3):
        image = read_image(path, slice_index=k)
        _check_rgb(image, (20, 24))
        assert image[0, 0, 0] > image[10, 10, 0]  # the marker stays top-left
    levels = [read_image(path, slice_index=k)[10, 10, 0] for k in range(3)]
    assert levels[0] < levels[1] < levels[2]  # one intensity scale for the whole volume


def test_nifti_is_reoriented_to_canonical(tmp_path: Path) -> None:
    ras = np.stack([np.rot90(s, k=-1) for s in _display_slices()], axis=2)
    las = ras[::-1]  # same anatomy stored with the x axis flipped
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = ras.shape[0] - 1
    a = write_nifti(tmp_path / "ras.nii", ras)
    b = write_nifti(tmp_path / "las.nii", las, affine=affine)
    for k in range(3):
        np.testing.assert_allclose(
            read_image(b, slice_index=k), read_image(a, slice_index=k), atol=1e-6
        )


def test_nifti_robust_percentile_scaling(tmp_path: Path) -> None:
    volume = np.tile(np.linspace(0, 100, 32, dtype=np.float32), (32, 32, 1)).transpose(0, 2, 1)
    volume[0, 0, 0] = 1e6  # one hot voxel must not squash the rest to black
    path = write_nifti(tmp_path / "hot.nii.gz", volume)
    image = read_image(path, slice_index=5)
    assert image.max() == pytest.approx(1.0) and image[..., 0].std() > 0.2


def test_nifti_4d_with_one_volume_is_accepted(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v4.nii.gz", np.ones((16, 16, 5, 1), np.float32))
    assert nifti_slice_count(path) == 5
    assert read_image(path, slice_index=4).shape == (16, 16, 3)


def test_nifti_4d_volume_is_rejected(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "fmri.nii.gz", np.zeros((16, 16, 4, 3), np.float32))
    message = (
        f"{path}: NIfTI image has 4 dimensions (16, 16, 4, 3); "
        "only 3-D volumes (or 4-D with one volume) are supported"
    )
    for call in (lambda: read_image(path, slice_index=0), lambda: nifti_slice_count(path)):
        with pytest.raises(DataError) as err:
            call()
        assert str(err.value) == message


def test_nifti_slice_index_rules(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", np.ones((16, 16, 3), np.float32))
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(err.value) == f"{path}: NIfTI volume has 3 axial slices; a slice index is needed"
    with pytest.raises(DataError) as err:
        read_image(path, slice_index=3)
    assert str(err.value) == f"{path}: slice index 3 is outside the volume's 3 axial slices"


# --- masks --------------------------------------------------------------------------------------------


def _lesion(dtype: type = np.uint8, on: float = 255) -> tuple[np.ndarray, np.ndarray]:
    """A 16x20 mask (stored values, expected bool) with a 3x6 lesion at ``on``."""
    raw = np.zeros((16, 20), dtype)
    raw[2:5, 3:9] = on
    return raw, raw == on


def _save_png(path: Path, raw: np.ndarray) -> Path:
    Image.fromarray(raw).save(path)
    return path


def _save_tiff(path: Path, raw: np.ndarray) -> Path:
    tifffile.imwrite(path, raw)
    return path


def _save_nifti_labels(path: Path, raw: np.ndarray) -> Path:
    return write_nifti(path, np.rot90(raw, -1)[..., None])  # the reader shows rot90 of (x, y)


def _mask_cases() -> list[tuple[str, Callable[[Path, np.ndarray], Path], np.ndarray, np.ndarray]]:
    cases = []
    raw, expected = _lesion()
    cases.append(("png 0/255", _save_png, raw, expected))
    raw, expected = _lesion(on=1)
    cases.append(("png 0/1 labels", _save_png, raw, expected))
    raw, _ = _lesion(on=4)
    raw[10, 10:12] = (1, 2)  # BraTS-style labels 1, 2, 4 (all at most 127): every label is lesion
    cases.append(("png labels 1 2 4", _save_png, raw, raw > 0))
    raw, expected = _lesion(np.uint16, on=255)  # a 16-bit two-valued mask: still a label image
    cases.append(("png 16 bit 0/255", _save_png, raw, expected))
    raw, expected = _lesion(np.int32, on=255)
    cases.append(("tiff int32 0/255", _save_tiff, raw, expected))
    raw, _ = _lesion(np.uint16, on=40000)
    raw[10, 10] = 20000  # below half of the 16-bit range: not lesion
    cases.append(("png 16 bit", _save_png, raw, raw == 40000))
    raw, _ = _lesion(np.float32, on=0.9)
    raw[10, 10] = 0.4  # a probability below one half
    cases.append(("tiff probabilities", _save_tiff, raw, raw == np.float32(0.9)))
    raw, expected = _lesion(np.float32, on=255.0)
    cases.append(("tiff float 0/255", _save_tiff, raw, expected))
    raw, _ = _lesion(np.int16, on=4)
    raw[10, 10:12] = (1, 2)  # BraTS-style labels 1, 2, 4: every label is lesion
    cases.append(("nifti labels", _save_nifti_labels, raw, raw > 0))
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[1, 1, 2] = 200  # any channel above half counts
    rgb[5, 5] = (100, 100, 100)  # every channel below half: not lesion
    expected = np.zeros((16, 20), bool)
    expected[1, 1] = True
    cases.append(("png rgb", _save_png, rgb, expected))
    return cases


@pytest.mark.parametrize(
    ("writer", "raw", "expected"),
    [case[1:] for case in _mask_cases()],
    ids=[case[0] for case in _mask_cases()],
)
def test_mask_is_thresholded_at_half_its_range(
    tmp_path: Path,
    writer: Callable[[Path, np.ndarray], Path],
    raw: np.ndarray,
    expected: np.ndarray,
) -> None:
    """Hand-made expectations per storage type. Kills: ``raw != 0`` (the old rule: the 16-bit,
    probability and RGB cases count their below-half pixels), a fixed 127 for every type (the
    label, 16-bit and int32 cases lose their lesion), half of the storage maximum without the
    label-image rule (labels and 16-bit 0/255 lost), half of the mask's own maximum (labels 1 and
    2 lost)."""
    suffixes = {_save_nifti_labels: ".nii.gz", _save_tiff: ".tif", _save_png: ".png"}
    suffix = suffixes[writer]
    path = writer(tmp_path / f"m{suffix}", raw)
    mask = read_mask(path, (16, 20))
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, expected)


def test_jpeg_mask_noise_is_not_lesion_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: a JPEG of a 0/255 mask has ringing around the lesion (nonzero pixels
    outside it). Kills: counting nonzero pixels; the [0, 1] label rule applied to JPEG; warning
    never, or for every file."""
    from pdd.data.readers import masks as readers_masks

    monkeypatch.setattr(readers_masks, "_WARNED_LOSSY", set())
    mask = np.zeros((64, 64), np.uint8)
    mask[13:30, 20:38] = 255
    first, second = tmp_path / "a.jpg", tmp_path / "b.jpg"
    Image.fromarray(mask).save(first, quality=75)
    Image.fromarray(mask).save(second, quality=75)
    assert (np.asarray(Image.open(first)) != 0).sum() > (mask != 0).sum()  # noise is there
    with pytest.warns(UserWarning, match=f"^{re.escape(str(first))}: JPEG masks are lossy"):
        np.testing.assert_array_equal(read_mask(first, (64, 64)), mask > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second JPEG mask does not warn again
        np.testing.assert_array_equal(read_mask(second, (64, 64)), mask > 0)
    faint = np.zeros((64, 64), np.uint8)
    faint[::3, ::3] = 1  # a JPEG whose noise is all 0/1 is not a 0/1 label image
    Image.fromarray(faint).save(tmp_path / "faint.jpg", quality=95)
    assert not read_mask(tmp_path / "faint.jpg", (64, 64)).any()


def test_mask_of_the_wrong_size(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError) as err:
        read_mask(tmp_path / "m.png", (32, 32))
    assert str(err.value) == f"{tmp_path / 'm.png'}: mask is 16x20 (HxW) but its image is 32x32"


# --- bad files -----------------------------------------------------------------------------------------


def _raises(path: Path, message: str, **kwargs: object) -> None:
    with pytest.raises(DataError) as err:
        read_image(path, **kwargs)  # type: ignore[arg-type]
    assert str(err.value) == f"{path}: {message}"
    assert "\n" not in str(err.value)


def test_truncated_png(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        tmp_path / "ok.png"
    )
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "cut.png", "truncated or corrupt PNG data")


def test_truncated_tiff(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "ok.tif", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    )
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:200])
    _raises(tmp_path / "cut.tif", "truncated or corrupt TIFF data")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    _raises(tmp_path / "empty.png", "file is empty (0 bytes)")


def test_text_file_with_image_extension(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not an image\n")
    _raises(
        tmp_path / "notes.png",
        "not an image file (content is not PNG, JPEG, BMP, GIF, TIFF, DICOM or NIfTI)",
    )


def test_missing_file(tmp_path: Path) -> None:
    _raises(tmp_path / "nope.png", "file not found")


def test_one_pixel_image(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    _raises(tmp_path / "dot.png", "image is 1x1 pixels, too small (each side must be at least 8)")


def test_very_large_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "huge.png", 10000, 10000)
    _raises(
        path,
        f"image is 10000x10000 = 100000000 pixels; the limit is {MAX_PIXELS} (decompression-bomb guard)",
    )
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    _raises(
        bomb,
        f"image is larger than 178956970 pixels; the limit is {MAX_PIXELS} (decompression-bomb guard)",
    )


def test_window_and_slice_only_where_they_apply(tmp_path: Path) -> None:
    Image.fromarray(_ramp()).save(tmp_path / "g.png")
    _raises(
        tmp_path / "g.png",
        "a display window only applies to DICOM files, this is PNG",
        window=(1.0, 2.0),
    )
    _raises(
        tmp_path / "g.png",
        "a slice index only applies to NIfTI volumes, this is PNG",
        slice_index=0,
    )


def test_truncated_nifti(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii", np.ones((32, 32, 8), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(path, "truncated or corrupt NIfTI data", slice_index=0)
    assert isinstance(nib.load(path), nib.Nifti1Image)  # the header alone is still fine


def _nifti_with_nan_affine(path: Path) -> Path:
    """A NIfTI-1 file whose sform row x holds a NaN (nibabel refuses to write one, so the header
    bytes are patched: srow_x starts at byte 280)."""
    img = nib.Nifti1Image(np.ones((16, 16, 2), np.float32), np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(np.eye(4), code=2)
    nib.save(img, path)
    data = bytearray(path.read_bytes())
    data[280:284] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(data))
    assert np.isnan(nib.load(path).affine[0, 0])
    return path


def test_nifti_with_a_nan_affine_is_a_data_error(tmp_path: Path) -> None:
    """Issue 20 case 6: numpy's ``LinAlgError: SVD did not converge`` escaped from the slice
    count and stopped a whole predict run. Kills: removing the finite-affine check."""
    path = _nifti_with_nan_affine(tmp_path / "nan.nii")
    message = "NIfTI affine holds NaN or infinite values; the axial axis is undefined"
    with pytest.raises(DataError) as err:
        nifti_slice_count(path)
    assert str(err.value) == f"{path}: {message}"
    _raises(path, message, slice_index=0)


def test_complex_nifti_is_refused_not_read_without_its_imaginary_part(tmp_path: Path) -> None:
    """Issue 20 case 5: the volume used to count 2 slices and read as its real part only (the
    Detector refuses complex arrays). Kills: removing the voxel-type check (slice count 2)."""
    real = np.random.default_rng(0).random((16, 16, 2)).astype(np.float32)
    path = write_nifti(tmp_path / "c.nii.gz", (real + 1j * real[::-1]).astype(np.complex64))
    message = (
        "NIfTI volume is complex-valued (datatype COMPLEX64); complex-valued volumes are not "
        "supported; save the magnitude"
    )
    with pytest.raises(DataError) as err:
        nifti_slice_count(path)
    assert str(err.value) == f"{path}: {message}"
    _raises(path, message, slice_index=0)


def test_rgb_nifti_is_refused_as_colour_not_as_corrupt(tmp_path: Path) -> None:
    """Issue 20 case 5: an RGB24 volume was reported as "truncated or corrupt NIfTI data". Kills:
    removing the voxel-type check (the old wrong reason comes back)."""
    rgb = np.zeros((16, 16, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 200
    path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    assert int(nib.load(path).header["datatype"]) == 128  # NIFTI_TYPE_RGB24
    message = (
        "NIfTI volume has colour voxels (datatype RGB24); colour volumes are not supported; "
        "save a greyscale volume"
    )
    with pytest.raises(DataError) as err:
        nifti_slice_count(path)
    assert str(err.value) == f"{path}: {message}"
    _raises(path, message, slice_index=0)


def test_nifti_slice_count_follows_the_affine_not_the_storage_order(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).random((8, 20, 24)).astype(np.float32)  # stored (z, x, y)
    affine = np.zeros((4, 4))
    affine[0, 1] = affine[1, 2] = affine[2, 0] = affine[3, 3] = 1.0
    path = write_nifti(tmp_path / "zxy.nii.gz", volume, affine=affine)
    assert nifti_slice_count(path) == 8
    assert read_image(path, slice_index=7).shape == (
        24,
        20,
        3,
    )  # rows = y (anterior at top), cols = x


def test_dicom_multi_frame_and_invalid_window(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "ct.dcm", np.zeros((16, 16), np.uint16), window=(40.0, 400.0))
    with pytest.raises(DataError) as err:
        read_image(path, window=(40.0, 0.0))
    assert str(err.value) == f"{path}: invalid DICOM window center 40.0 / width 0.0"
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = np.zeros((2, 16, 16), np.uint16).tobytes()
    ds.save_as(path)
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(err.value) == (
        f"{path}: multi-frame DICOM (2 frames) is not supported; export one file per frame"
    )


def test_nifti_mask_slice(tmp_path: Path) -> None:
    mask = np.zeros((12, 10, 2), np.uint8)
    mask[3, 4, 1] = 1
    path = write_nifti(tmp_path / "m.nii.gz", mask)
    assert not read_mask(path, (10, 12), slice_index=0).any()
    assert read_mask(path, (10, 12), slice_index=1).sum() == 1


# --- hostile DICOM attributes (issue 11, cases 5 and 19) ------------------------------------------


def _patch_dicom(path: Path, keyword: str, raw: bytes) -> Path:
    """Overwrite one top-level element's value bytes (explicit VR little endian, 2-byte length), as
    a broken writer would: pydicom refuses to write such values itself."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    vr = pydicom.datadict.dictionary_VR(keyword).encode()
    assert tag is not None and len(vr) == 2
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    data = path.read_bytes()
    at = data.index(head, 132 + 12)  # after the preamble and the meta group's length element
    (old,) = struct.unpack("<H", data[at + 6 : at + 8])
    raw += b" " * (len(raw) % 2)
    path.write_bytes(data[:at] + head + struct.pack("<H", len(raw)) + raw + data[at + 8 + old :])
    return path


def _ct(path: Path) -> Path:
    stored = (np.arange(32 * 32).reshape(32, 32) * 3).astype(np.uint16)
    path = write_dicom(path, stored, slope=7.0, intercept=-1024.0, window=(40.0, 400.0))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 1  # present, so that its value can be broken
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    ("keyword", "raw", "problem"),
    [
        ("RescaleSlope", b"1\\2", "DICOM RescaleSlope has 2 values (1\\2); it must have one"),
        ("RescaleSlope", b"abc", "DICOM RescaleSlope is 'abc', not a number"),
        ("RescaleSlope", b"nan", "DICOM RescaleSlope is 'nan', not a finite number"),
        ("RescaleIntercept", b"1e999", "DICOM RescaleIntercept is '1e999', not a finite number"),
        ("WindowCenter", b"ab", "DICOM WindowCenter is 'ab', not a number"),
        ("WindowWidth", b"x\\400", "DICOM WindowWidth is 'x', not a number"),
        ("NumberOfFrames", b"x", "DICOM NumberOfFrames is 'x', not a number"),
    ],
)
def test_dicom_with_an_unparsable_attribute_is_one_data_error(
    tmp_path: Path, keyword: str, raw: bytes, problem: str
) -> None:
    """pydicom keeps these values as text or lists; float()/int() on them raised ValueError or
    TypeError, which `pdd predict` does not catch per file, so one file ended the whole run.
    Kills: dropping the per-tag checks in _dicom_number (the raw ValueError/TypeError escapes,
    or the message no longer names the tag)."""
    path = _patch_dicom(_ct(tmp_path / "ct.dcm"), keyword, raw)
    _raises(path, problem)


def test_dicom_multi_valued_window_uses_its_first_value(tmp_path: Path) -> None:
    """DICOM allows several windows (alternatives); the first is the default even when a later
    one is unparsable. Kills: reading a later value, or refusing multi-valued windows."""
    path = _patch_dicom(_ct(tmp_path / "ct.dcm"), "WindowCenter", b"40\\ab")
    _patch_dicom(path, "WindowWidth", b"400\\0")
    stored = (np.arange(32 * 32).reshape(32, 32) * 3).astype(np.float64)
    expected = np.clip((stored * 7.0 - 1024.0 - (40.0 - 200.0)) / 400.0, 0, 1)
    np.testing.assert_allclose(read_image(path)[..., 0], expected, atol=1e-6)


def _colour_dicom(
    path: Path, pixels: np.ndarray, photometric: str, lut: np.ndarray | None = None
) -> Path:
    """An 8-bit RGB (HxWx3) or PALETTE COLOR (HxW indices + a 16-bit Nx3 table) DICOM file."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, "1.2.3.4"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if lut is not None:
        for colour, column in (("Red", 0), ("Green", 1), ("Blue", 2)):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [len(lut), 0, 16])
            setattr(
                ds,
                f"{colour}PaletteColorLookupTableData",
                lut[:, column].astype("<u2").tobytes(),
            )
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_palette_colour_dicom_is_mapped_through_its_palette(tmp_path: Path) -> None:
    """Kills: scoring the raw palette indices (the old behaviour: index 3 became grey 3/255)."""
    indices = (np.arange(16 * 16).reshape(16, 16) % 4).astype(np.uint8)
    lut = np.zeros((256, 3), np.int64)
    lut[1], lut[2], lut[3] = (65535, 0, 0), (0, 65535, 0), (13107, 26214, 65535)
    image = read_image(_colour_dicom(tmp_path / "pal.dcm", indices, "PALETTE COLOR", lut))
    _check_rgb(image, (16, 16))
    np.testing.assert_allclose(image, lut[indices] / 65535.0, atol=1e-6)


@pytest.mark.parametrize("photometric", ["RGB", "PALETTE COLOR"])
def test_a_window_on_colour_dicom_is_refused(tmp_path: Path, photometric: str) -> None:
    """`--window` used to be ignored on RGB files without a word. Kills: dropping the refusal."""
    if photometric == "RGB":
        path = _colour_dicom(tmp_path / "c.dcm", np.full((16, 16, 3), 9, np.uint8), "RGB")
    else:
        lut = np.tile(np.arange(256)[:, None] * 257, (1, 3))
        path = _colour_dicom(tmp_path / "c.dcm", np.ones((16, 16), np.uint8), photometric, lut)
    _raises(
        path,
        f"a display window only applies to greyscale DICOM, this file is {photometric}",
        window=(40.0, 400.0),
    )
    assert read_image(path).shape == (16, 16, 3)  # without a window the file reads


# --- limits checked on the header, files never opened (issue 11, cases 24, 17, 26) ----------------


def _nifti2_header_only(path: Path, shape: tuple[int, ...]) -> Path:
    """A NIfTI-2 file of 544 bytes whose header claims ``shape`` (no voxel data follows)."""
    header = nib.Nifti2Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_data_offset(544)
    path.write_bytes(header.binaryblock + b"\0" * 4)
    return path


def test_nifti_header_claiming_too_many_voxels_is_refused_from_the_header(tmp_path: Path) -> None:
    """The issue's 8 x 8 x 20,000,000 header: 20 M samples (2.9 GB) were built from the slice
    count before any limit was checked. Kills: dropping the voxel check in nifti_slice_count."""
    path = _nifti2_header_only(tmp_path / "bomb.nii", (8, 8, 20_000_000))
    problem = (
        "NIfTI volume has 1280000000 voxels (8, 8, 20000000); the limit is 268435456 "
        "(decompression-bomb guard)"
    )
    with pytest.raises(DataError) as err:
        nifti_slice_count(path)
    assert str(err.value) == f"{path}: {problem}"
    _raises(path, problem, slice_index=0)


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ((16, 16, 0), "NIfTI volume has 0 axial slices (16, 16, 0); there is no image in it"),
        ((4, 16, 3), "image is 4x16 pixels, too small (each side must be at least 8)"),
    ],
)
def test_nifti_header_sizes_are_checked_before_counting_slices(
    tmp_path: Path, shape: tuple[int, ...], problem: str
) -> None:
    """A volume with no slice used to count 0 samples, so `pdd predict` dropped it silently.
    Kills: removing the zero-slice check, or the slice-size check, from _nifti_sizes."""
    path = _nifti2_header_only(tmp_path / "v.nii", shape)
    with pytest.raises(DataError) as err:
        nifti_slice_count(path)
    assert str(err.value) == f"{path}: {problem}"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["zz.png", "zz.nii"])
def test_a_named_pipe_is_never_opened(tmp_path: Path, name: str) -> None:
    """Opening a FIFO blocks until a writer appears (for ever). Kills: opening before the stat
    check (the test then hangs until its timeout)."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    extra = {"slice_index": 0} if name.endswith(".nii") else {}
    _raises(fifo, "not a regular file (named pipe)", **extra)
    with pytest.raises(DataError, match="named pipe"):
        read_mask(fifo, (8, 8))
    with pytest.raises(DataError, match="named pipe"):
        nifti_slice_count(fifo)


def test_broken_link_and_folder_are_named(tmp_path: Path) -> None:
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    _raises(tmp_path / "dangling.png", "broken symbolic link")
    (tmp_path / "dir.png").mkdir()
    _raises(tmp_path / "dir.png", "is a folder, not a file")


# --- compressed TIFF (imagecodecs) -------------------------------------------------------------


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate"])
def test_compressed_tiff_reads_exactly(tmp_path: Path, compression: str) -> None:
    """LZW/Deflate TIFFs (written by Pillow's libtiff) decode to the stored pixels. Kills: a
    missing imagecodecs dependency (tifffile cannot decode LZW without it)."""
    pixels = _ramp(40, 56)
    Image.fromarray(pixels).save(tmp_path / "c.tif", compression=compression)
    np.testing.assert_allclose(read_image(tmp_path / "c.tif")[..., 0], pixels / 255.0, atol=1e-6)


def test_jpeg_compressed_tiff_reads(tmp_path: Path) -> None:
    rgb = np.zeros((32, 40, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "j.tif", compression="jpeg")
    np.testing.assert_allclose(read_image(tmp_path / "j.tif")[4, 4], [200 / 255, 0, 0], atol=0.03)


def test_tiff_without_imagecodecs_says_so(tmp_path: Path) -> None:
    """In a process where imagecodecs cannot be imported, an LZW TIFF is not "truncated or
    corrupt": the message names the compression and the package. Kills: the old message."""
    Image.fromarray(_ramp()).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    script = (
        "import sys; sys.modules['imagecodecs'] = None\n"
        "from pdd.data.readers import read_image\n"
        "from pdd.errors import DataError\n"
        "try:\n"
        f"    read_image({str(tmp_path / 'lzw.tif')!r})\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == (
        f"{tmp_path / 'lzw.tif'}: TIFF compression LZW needs the imagecodecs package "
        "(pip install imagecodecs); the file itself may be fine"
    )


# --- bounded decoding (issue 11, case 25) ------------------------------------------------------


def test_target_size_reduces_large_images_by_area_averages(tmp_path: Path) -> None:
    """900 x 1200 with target 64: factor 900 // (4 * 64) = 3 -> 300 x 400, each pixel the mean of
    a 3 x 3 block, kept in the storage type (8 bit: /255; 16 bit TIFF: /65535; 1 bit: the
    fraction). Reference: numpy block means of the full-size read. Kills: a different factor
    (shape), a float result from _reduce (16-bit values would then be min-max scaled), a bool
    result (any set pixel would whiten its block), no reduction at all."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (900, 1200), dtype=np.uint8)
    wide = rng.integers(0, 65536, (900, 1200), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    tifffile.imwrite(tmp_path / "w.tif", wide)
    tifffile.imwrite(tmp_path / "b.tif", grey > 127)  # 1 bit: blocks become grey fractions
    cases = ((tmp_path / "g.png", 255), (tmp_path / "w.tif", 65535), (tmp_path / "b.tif", 1e6))
    for path, step in cases:
        full = read_image(path)[..., 0].astype(np.float64)
        small = read_image(path, target_size=64)
        _check_rgb(small, (300, 400))
        blocks = full.reshape(300, 3, 400, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(small[..., 0], blocks, atol=1.0 / step)  # Pillow rounds in 8 bit


def test_target_size_keeps_small_images_and_is_validated(tmp_path: Path) -> None:
    Image.fromarray(_ramp(300, 260)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "g.png", target_size=64), read_image(tmp_path / "g.png")
    )  # 260 < 2 * 4 * 64: nothing to gain
    with pytest.raises(ValueError, match="target_size"):
        read_image(tmp_path / "g.png", target_size=0)


def test_target_size_keeps_the_model_input_close_and_the_aspect(tmp_path: Path) -> None:
    """What the model sees from a reduced read stays within 0.02 (max) / 0.002 (mean) of the
    full-size read, in [0, 1] intensity units (measured: 0.018 / 0.0006 at the skull edge of a
    phantom scaled to 1100 x 900), and the aspect is kept to within a pixel."""
    from pdd.data import to_model_input
    from pdd.data.synthetic import make_phantom

    phantom, _ = make_phantom(np.random.default_rng(0), 256, True)
    big = Image.fromarray((phantom * 255).astype(np.uint8)).resize((1100, 900), Image.BICUBIC)
    big.save(tmp_path / "p.png")
    full, small = read_image(tmp_path / "p.png"), read_image(tmp_path / "p.png", target_size=64)
    assert small.shape == (300, 367, 3)
    diff = (to_model_input(full, 64) - to_model_input(small, 64)).abs() * 0.229  # undo the std
    assert float(diff.max()) < 0.02 and float(diff.mean()) < 0.002


def test_target_size_decodes_jpeg_at_a_reduced_scale(tmp_path: Path) -> None:
    """JPEG is reduced inside the decoder (DCT scaling, 1/4 here), never held at full size.
    2048 x 1536 with target 64 asks for at least 256 rows: libjpeg's 1/4 scale gives 384 x 512.
    Kills: dropping the draft (the plain reduction would give 256 x 341)."""
    pixels = np.tile(np.linspace(0, 255, 2048, dtype=np.uint8), (1536, 1))
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    small = read_image(tmp_path / "big.jpg", target_size=64)
    assert small.shape == (384, 512, 3)
    np.testing.assert_allclose(small[0, ::64, 0], pixels[0, ::256] / 255.0, atol=0.03)


def test_target_size_applies_to_dicom_and_nifti(tmp_path: Path) -> None:
    """The stored DICOM values are averaged before the modality LUT and window (reference: the
    window applied to numpy block means of the stored pixels); a NIfTI slice is reduced too."""
    stored = (np.arange(512 * 520).reshape(512, 520) % 4000).astype(np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=1.0, intercept=-1024.0, window=(40, 400))
    small = read_image(path, target_size=32)  # factor 512 // 128 = 4
    blocks = np.rint(stored.reshape(128, 4, 130, 4).mean(axis=(1, 3)))
    np.testing.assert_allclose(
        small[..., 0], np.clip((blocks - 1024.0 + 160.0) / 400.0, 0, 1), atol=1e-6
    )
    volume = write_nifti(tmp_path / "v.nii", np.ones((520, 512, 2), np.float32))
    assert read_image(volume, slice_index=1, target_size=32).shape == (128, 130, 3)
