"""Readers: every supported format gives float32 HxWx3 in [0, 1]; every bad file a one-line DataError."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from pdd.data import MAX_PIXELS, nifti_slice_count, read_image, read_mask
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


def test_read_mask_nonzero_is_anomalous(tmp_path: Path) -> None:
    mask = np.zeros((16, 20), np.uint8)
    mask[2:5, 3:9] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", (16, 20)), mask > 0)
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[1, 1, 2] = 1  # any nonzero channel counts
    Image.fromarray(rgb).save(tmp_path / "c.png")
    result = read_mask(tmp_path / "c.png", (16, 20))
    assert result.dtype == np.bool_ and result.sum() == 1 and result[1, 1]


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
