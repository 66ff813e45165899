"""Brain-like synthetic phantoms: the project's built-in data for the demo and for tests.

A phantom is an axial slice: an elliptical head with a bright skull ring, smooth tissue with a
brighter cortical rim and low-frequency texture, two dark ventricles, and per-image variation in
shape, position, rotation and intensity. Anomalous phantoms add one lesion with a varied size
(small to large), contrast (bright or dark) and irregular shape; its mask marks where the lesion
changes the image. Everything is deterministic given the seed, and fast (no Python loops over pixels).

:func:`make_phantom_dataset` writes any supported layout so that every reader and layout parser can
be exercised on disk; :func:`write_dicom` and :func:`write_nifti` are the small writers it uses.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

__all__ = ["LAYOUTS", "make_phantom", "make_phantom_dataset", "write_dicom", "write_nifti"]

LAYOUTS = ("folder", "headct", "brainmri", "zhanglab", "unimedical", "bmad")
_IMAGE_FORMATS = ("png", "dicom", "nifti")
_NIFTI_SLICES = 4  # slices per written NIfTI volume


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, upsampled and smoothed."""
    coarse = max(4, int(round(size / scale)))
    grid = rng.standard_normal((coarse, coarse))
    field = zoom(grid, size / coarse, order=3)[:size, :size]
    field = gaussian_filter(field, sigma=1.0)
    return field / (np.abs(field).max() + 1e-8)


def make_phantom(
    rng: np.random.Generator, size: int = 128, lesion: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom slice: (image float32 HxW in [0, 1], mask bool HxW; all False without a lesion)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size - 0.5
    cx, cy = rng.uniform(-0.04, 0.04, 2)
    ax, ay = rng.uniform(0.33, 0.40), rng.uniform(0.39, 0.45)
    theta = rng.uniform(-0.25, 0.25)
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * (xx - cx) + sin * (yy - cy)) / ax
    v = (-sin * (xx - cx) + cos * (yy - cy)) / ay
    # Irregular outline: the radius wobbles with a few low harmonics.
    angle = np.arctan2(v, u)
    wobble = 1.0 + sum(
        rng.uniform(-0.02, 0.02) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    r = np.hypot(u, v) / wobble

    skull_thickness = rng.uniform(0.06, 0.10)
    brain = r < 1.0
    skull = (r >= 1.0) & (r < 1.0 + skull_thickness)
    tissue_level = rng.uniform(0.38, 0.50)
    image = np.zeros((size, size))
    image[skull] = rng.uniform(0.85, 0.98)
    cortex = np.clip((r - 0.75) / 0.2, 0.0, 1.0) * (r < 1.0)
    tissue = (
        tissue_level
        + 0.10 * cortex
        + 0.05 * _smooth_noise(rng, size, 10)
        + 0.02 * _smooth_noise(rng, size, 4)
    )
    image = np.where(brain, tissue, image)

    # Two ventricles, roughly mirror images across the midline.
    vent_dx = rng.uniform(0.10, 0.16)
    vent_level = rng.uniform(0.10, 0.20)
    for side in (-1.0, 1.0):
        vu = (u - side * vent_dx * (1 + rng.uniform(-0.1, 0.1))) / rng.uniform(0.08, 0.12)
        vv = (v + rng.uniform(-0.06, 0.06)) / rng.uniform(0.25, 0.35)
        vent = np.hypot(vu, vv) < 1.0
        image[vent & brain] = vent_level

    mask = np.zeros((size, size), dtype=bool)
    if lesion:
        image, mask = _add_lesion(rng, image, u, v, r, brain, size)
    image = gaussian_filter(image, sigma=0.6) + rng.normal(0.0, 0.01, (size, size))
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask


def _add_lesion(
    rng: np.random.Generator,
    image: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    r: np.ndarray,
    brain: np.ndarray,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A blob with an irregular outline and soft edge inside the brain, bright or dark."""
    radius = float(np.exp(rng.uniform(np.log(0.06), np.log(0.45))))  # in head radii: small to large
    dist = rng.uniform(0.0, max(0.0, 0.85 - radius))
    phi = rng.uniform(0, 2 * np.pi)
    lu, lv = u - dist * np.cos(phi), v - dist * np.sin(phi)
    stretch = rng.uniform(0.6, 1.4)
    angle = np.arctan2(lv, lu)
    outline = 1.0 + sum(
        rng.uniform(-0.15, 0.15) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)
    )
    rho = np.hypot(lu * stretch, lv / stretch) / (radius * outline)
    weight = np.clip((1.2 - rho) / 0.4, 0.0, 1.0) * (r < 0.97)  # soft edge, stays inside the skull
    bright = rng.random() < 0.5
    contrast = rng.uniform(0.25, 0.45) if bright else -rng.uniform(0.2, 0.3)
    texture = 1.0 + 0.15 * _smooth_noise(rng, size, 8)
    lesioned = image + weight * contrast * texture
    mask = (weight >= 0.5) & brain
    if not mask.any():  # a tiny lesion that fell between pixels: mark its centre pixel
        centre = np.unravel_index(np.argmin(np.where(brain, rho, np.inf)), rho.shape)
        mask[centre] = True
        lesioned[centre] = image[centre] + contrast
    return lesioned, mask


# --- writers ------------------------------------------------------------------------------------


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _save_png(path: Path, image: np.ndarray, mode: str = "L", fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = _to_uint8(image)
    if mode == "RGB":
        pil = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    elif mode == "RGBA":
        pil = Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]))
    else:
        pil = Image.fromarray(grey)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    path.write_bytes(buffer.getvalue())


def _save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG")


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    photometric: str = "MONOCHROME2",
    uid_seed: str = "pdd-phantom",
    patient_id: str | None = None,
) -> Path:
    """Write a single-frame grey DICOM (CT image storage) from an integer HxW array.

    ``window`` may be one (center, width) or several (stored multi-valued). UIDs derive from
    ``uid_seed`` and the path so that output is deterministic. ``patient_id`` defaults to one
    derived from ``uid_seed`` (so files with different seeds are different patients); ``""`` writes
    an empty PatientID.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(
            f"write_dicom needs an integer HxW array, got {pixels.dtype} {pixels.shape}"
        )
    signed = np.issubdtype(pixels.dtype, np.signedinteger)
    pixels = pixels.astype(np.int16 if signed else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, path.name, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality = "CT"
    ds.PatientName = "Phantom^Synthetic"
    if patient_id is None:
        patient_id = "PHANTOM-" + generate_uid(entropy_srcs=[uid_seed, "patient"])[-16:]
    ds.PatientID = patient_id
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    if window is not None:
        windows = [window] if np.isscalar(window[0]) else list(window)  # type: ignore[index]
        centers = [f"{float(c):g}" for c, _ in windows]  # type: ignore[misc]
        widths = [f"{float(w):g}" for _, w in windows]  # type: ignore[misc]
        ds.WindowCenter = centers if len(centers) > 1 else centers[0]
        ds.WindowWidth = widths if len(widths) > 1 else widths[0]
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: str | Path, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write a NIfTI-1 volume (``.nii`` or ``.nii.gz``); the default affine is 1 mm RAS."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(volume), np.eye(4) if affine is None else affine)
    nib.save(img, path)
    return path


def _slices_to_volume(slices: Sequence[np.ndarray]) -> np.ndarray:
    """Stack display-oriented slices so that the reader's ``rot90(volume[:, :, k])`` returns them."""
    return np.stack([np.rot90(s, k=-1) for s in slices], axis=2)


# --- datasets -----------------------------------------------------------------------------------


class _Writer:
    """Generates phantoms in a fixed order from one seeded generator, so files are deterministic."""

    def __init__(self, seed: int, size: int, class_index: int) -> None:
        self.rng = np.random.default_rng([seed, class_index])
        self.size = size

    def normals(self, n: int) -> list[np.ndarray]:
        return [make_phantom(self.rng, self.size, lesion=False)[0] for _ in range(n)]

    def abnormals(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [make_phantom(self.rng, self.size, lesion=True) for _ in range(n)]


def _write_set(
    folder: Path,
    images: Sequence[np.ndarray],
    image_format: str,
    masks_folder: Path | None = None,
    masks: Sequence[np.ndarray] | None = None,
    mask_suffix: str = "_mask",
    uid_seed: str = "",
) -> None:
    """Images (and masks) as PNG, DICOM files, or NIfTI volumes of a few slices each.

    ``uid_seed`` (the folder relative to the dataset root) makes DICOM UIDs unique yet deterministic."""
    if image_format == "png":
        for i, image in enumerate(images):
            _save_png(folder / f"{i:03d}.png", image)
            if masks is not None and masks_folder is not None:
                _save_mask(masks_folder / f"{i:03d}{mask_suffix}.png", masks[i])
    elif image_format == "dicom":
        for i, image in enumerate(images):
            hu = np.round(image * 2000.0).astype(np.int16) - 1000  # stored as Hounsfield-like units
            write_dicom(
                folder / f"{i:03d}.dcm",
                (hu + 1024).astype(np.uint16),
                slope=1.0,
                intercept=-1024.0,
                window=(0.0, 2000.0),
                uid_seed=f"{uid_seed}/{i}",
            )
            if masks is not None and masks_folder is not None:
                _save_mask(masks_folder / f"{i:03d}{mask_suffix}.png", masks[i])
    else:
        for start in range(0, len(images), _NIFTI_SLICES):
            name = f"{start // _NIFTI_SLICES:03d}"
            chunk = images[start : start + _NIFTI_SLICES]
            write_nifti(
                folder / f"{name}.nii.gz",
                _slices_to_volume([np.round(c * 1000).astype(np.int16) for c in chunk]),
            )
            if masks is not None and masks_folder is not None:
                mask_chunk = [m.astype(np.uint8) for m in masks[start : start + _NIFTI_SLICES]]
                write_nifti(
                    masks_folder / f"{name}{mask_suffix}.nii.gz", _slices_to_volume(mask_chunk)
                )


def make_phantom_dataset(
    root: str | Path,
    layout: str = "folder",
    *,
    n_train: int = 20,
    n_test_normal: int = 10,
    n_test_abnormal: int = 10,
    size: int = 128,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    image_format: str = "png",
) -> Path:
    """Write a phantom dataset in one of :data:`LAYOUTS` under ``root`` and return ``root``.

    Counts are per class. For layouts without an official split (headct, brainmri) the normal images
    are ``n_train + n_test_normal``. ``classes`` makes folder/bmad sets multi-class (one sub-folder per
    class); unimedical always has classes (default brain, liver, retinal). ``image_format`` (png, dicom,
    nifti) applies to the folder layout; nifti groups 4 slices per volume. BMAD's valid/ split gets
    half the test counts (at least one each). ZhangLab's train/PNEUMONIA gets ``n_test_abnormal``
    images, as in the real set (unused by training).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if image_format not in _IMAGE_FORMATS:
        raise ValueError(
            f"unknown image format {image_format!r}; choose one of {', '.join(_IMAGE_FORMATS)}"
        )
    if image_format != "png" and layout != "folder":
        raise ValueError("DICOM and NIfTI phantoms are written for the folder layout only")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if layout == "unimedical":
        _write_unimedical(
            root,
            list(classes or ("brain", "liver", "retinal")),
            n_train,
            n_test_normal,
            n_test_abnormal,
            size,
            seed,
        )
        return root
    class_list: list[str | None] = list(classes) if classes else [None]
    if len(class_list) > 1 and layout not in ("folder", "bmad"):
        raise ValueError(f"the {layout} layout has a single class")
    for index, cls in enumerate(class_list):
        base = root / cls if cls else root
        gen = _Writer(seed, size, index)
        if layout == "folder":
            tag = f"{seed}/{cls or ''}"
            _write_set(
                base / "train" / "good",
                gen.normals(n_train),
                image_format,
                uid_seed=f"{tag}/train/good",
            )
            _write_set(
                base / "test" / "good",
                gen.normals(n_test_normal),
                image_format,
                uid_seed=f"{tag}/test/good",
            )
            pairs = gen.abnormals(n_test_abnormal)
            _write_set(
                base / "test" / "lesion",
                [p[0] for p in pairs],
                image_format,
                base / "ground_truth" / "lesion",
                [p[1] for p in pairs],
                uid_seed=f"{tag}/test/lesion",
            )
        elif layout == "bmad":
            _write_bmad(base, gen, n_train, n_test_normal, n_test_abnormal)
        elif layout == "headct":
            _write_headct(base, gen, n_train + n_test_normal, n_test_abnormal)
        elif layout == "brainmri":
            _write_brainmri(base, gen, n_train + n_test_normal, n_test_abnormal)
        else:
            _write_zhanglab(base, gen, n_train, n_test_normal, n_test_abnormal)
    return root


def _write_bmad(
    base: Path, gen: _Writer, n_train: int, n_test_normal: int, n_test_abnormal: int
) -> None:
    _write_set(base / "train" / "good" / "img", gen.normals(n_train), "png")
    for split, n_good, n_bad in (
        ("valid", max(1, n_test_normal // 2), max(1, n_test_abnormal // 2)),
        ("test", n_test_normal, n_test_abnormal),
    ):
        _write_set(base / split / "good" / "img", gen.normals(n_good), "png")
        pairs = gen.abnormals(n_bad)
        _write_set(
            base / split / "Ungood" / "img",
            [p[0] for p in pairs],
            "png",
            base / split / "Ungood" / "label",
            [p[1] for p in pairs],
            mask_suffix="",
        )


def _write_headct(base: Path, gen: _Writer, n_normal: int, n_abnormal: int) -> None:
    """Like the published set: ids 0.. are hemorrhage first, RGB PNGs with a few RGBA ones."""
    images = [p[0] for p in gen.abnormals(n_abnormal)] + gen.normals(n_normal)
    for i, image in enumerate(images):
        _save_png(base / "head_ct" / f"{i:03d}.png", image, mode="RGBA" if i % 16 == 5 else "RGB")
    text = "id, hemorrhage\n" + "".join(
        f"{i},{'1' if i < n_abnormal else '0'}\n" for i in range(len(images))
    )
    (base / "labels.csv").write_text(text)


def _write_brainmri(base: Path, gen: _Writer, n_normal: int, n_abnormal: int) -> None:
    """JPEG files, with every fourth one a PNG named .jpg as in the published set."""
    for folder, prefix, images in (
        ("no", "N", gen.normals(n_normal)),
        ("yes", "Y", [p[0] for p in gen.abnormals(n_abnormal)]),
    ):
        for i, image in enumerate(images):
            _save_png(
                base / folder / f"{prefix}{i + 1}.jpg",
                image,
                mode="RGB",
                fmt="PNG" if i % 4 == 3 else "JPEG",
            )


def _write_zhanglab(
    base: Path, gen: _Writer, n_train: int, n_test_normal: int, n_test_abnormal: int
) -> None:
    top = base / "chest_xray"
    for split, n_normal, n_pneu in (
        ("train", n_train, n_test_abnormal),
        ("test", n_test_normal, n_test_abnormal),
    ):
        for i, image in enumerate(gen.normals(n_normal)):
            _save_png(top / split / "NORMAL" / f"IM-{i:04d}-0001.jpeg", image, fmt="JPEG")
        for i, (image, _) in enumerate(gen.abnormals(n_pneu)):
            _save_png(top / split / "PNEUMONIA" / f"person{i}_bacteria_{i}.jpeg", image, fmt="JPEG")


def _write_unimedical(
    root: Path,
    classes: list[str],
    n_train: int,
    n_test_normal: int,
    n_test_abnormal: int,
    size: int,
    seed: int,
) -> None:
    """ADer layout: <class>/train/good, <class>/test/{good,ungood}/img|label and meta.json."""
    meta: dict[str, dict[str, list[dict[str, object]]]] = {"train": {}, "test": {}}
    for index, cls in enumerate(classes):
        gen = _Writer(seed, size, index)
        train, test = [], []
        for i, image in enumerate(gen.normals(n_train)):
            rel = f"{cls}/train/good/img/{i:03d}.png"
            _save_png(root / rel, image)
            train.append(
                {"img_path": rel, "mask_path": "", "cls_name": cls, "specie_name": "", "anomaly": 0}
            )
        for i, image in enumerate(gen.normals(n_test_normal)):
            rel = f"{cls}/test/good/img/{i:03d}.png"
            _save_png(root / rel, image)
            test.append(
                {"img_path": rel, "mask_path": "", "cls_name": cls, "specie_name": "", "anomaly": 0}
            )
        for i, (image, mask) in enumerate(gen.abnormals(n_test_abnormal)):
            rel = f"{cls}/test/ungood/img/{i:03d}.png"
            mask_rel = f"{cls}/test/ungood/label/{i:03d}.png"
            _save_png(root / rel, image)
            _save_mask(root / mask_rel, mask)
            test.append(
                {
                    "img_path": rel,
                    "mask_path": mask_rel,
                    "cls_name": cls,
                    "specie_name": "ungood",
                    "anomaly": 1,
                }
            )
        meta["train"][cls] = train
        meta["test"][cls] = test
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
