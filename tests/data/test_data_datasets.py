"""Layouts on generated phantom sets (auto-detection included), the torch Dataset, prediction inputs,
and every bad-layout case with its exact one-line message."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdd.data import (
    ImageDataset,
    Sample,
    collect_inputs,
    detect_format,
    list_classes,
    load_dataset,
    make_phantom_dataset,
)
from pdd.data.synthetic import write_dicom, write_nifti
from pdd.errors import DataError

SMALL = {"n_train": 6, "n_test_normal": 3, "n_test_abnormal": 3, "size": 32}


def _make(tmp_path: Path, layout: str, **kwargs: object) -> Path:
    return make_phantom_dataset(tmp_path / layout, layout, **{**SMALL, **kwargs})  # type: ignore[arg-type]


def _check_invariants(split) -> None:  # type: ignore[no-untyped-def]
    keys = [s.key for s in split.train + split.holdout]
    assert len(keys) == len(set(keys))
    assert not set(keys) & {s.key for s in split.test}
    assert all(s.label == 0 for s in split.train + split.holdout)


# layout, expected (train, holdout, test normal, test abnormal, has_masks)
LAYOUT_COUNTS = {
    "folder": (5, 1, 3, 3, True),
    "headct": (6, 1, 2, 3, False),  # 9 normals: 2 to test (25 %), 1 of 7 held out (10 %)
    "brainmri": (6, 1, 2, 3, False),
    "zhanglab": (5, 1, 3, 3, False),
    "unimedical": (15, 3, 9, 9, True),  # three classes
    "bmad": (6, 1, 3, 3, True),  # holdout = valid/good
}


@pytest.mark.parametrize("layout", sorted(LAYOUT_COUNTS))
def test_each_layout_is_detected_and_split(tmp_path: Path, layout: str) -> None:
    root = _make(tmp_path, layout)
    assert detect_format(root) == layout
    split = load_dataset(root)
    n_train, n_holdout, n_test_normal, n_test_abnormal, has_masks = LAYOUT_COUNTS[layout]
    assert split.format == layout and split.root == root
    assert (len(split.train), len(split.holdout)) == (n_train, n_holdout)
    assert sum(s.label == 0 for s in split.test) == n_test_normal
    assert sum(s.label == 1 for s in split.test) == n_test_abnormal
    assert split.has_masks is has_masks
    assert split.skipped == []
    _check_invariants(split)
    data = ImageDataset(split.test, 32)
    for index in range(len(data)):
        item = data[index]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 32, 32) and item["index"] == index
        assert int(item["label"]) == split.test[index].label
        if has_masks and split.test[index].label == 1:
            assert item["mask"].sum() > 0
        if split.test[index].label == 0:
            assert item["mask"].sum() == 0


def test_layout_given_explicitly_and_unknown_format_name(tmp_path: Path) -> None:
    root = _make(tmp_path, "headct")
    assert load_dataset(root, "headct").format == "headct"
    with pytest.raises(DataError) as err:
        load_dataset(root, "mvtec")
    assert str(err.value) == (
        "unknown dataset format 'mvtec'; choose auto or one of folder, headct, brainmri, zhanglab, unimedical, bmad"
    )


def test_folder_without_test_good_gets_a_seeded_normal_split(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder", n_train=8)
    shutil.rmtree(root / "test" / "good")
    split = load_dataset(root, seed=3)
    assert [len(split.train), len(split.holdout)] == [
        5,
        1,
    ]  # 8 normals: 2 to test, then 1 of 6 held out
    assert sum(s.label == 0 for s in split.test) == 2 and sum(s.label == 1 for s in split.test) == 3
    _check_invariants(split)


def test_multi_class_folder_and_bmad(tmp_path: Path) -> None:
    for layout in ("folder", "bmad"):
        root = _make(tmp_path, layout, classes=["head", "chest"])
        assert list_classes(root, "auto") == ["chest", "head"]
        everything = load_dataset(root)
        assert everything.format == layout
        assert {s.class_name for s in everything.train} == {"chest", "head"}
        one = load_dataset(root, class_name="head")
        assert one.class_name == "head" and {s.class_name for s in one.test} == {"head"}
        assert len(one.test) * 2 == len(everything.test)
        with pytest.raises(DataError) as err:
            load_dataset(root, class_name="knee")
        assert str(err.value) == f"{root}: class 'knee' not found (classes: chest, head)"


def test_classes_are_split_independently(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder", classes=["a", "b"], n_train=8)
    shutil.rmtree(root / "b" / "test" / "good")  # class b has no official split, class a has one
    split = load_dataset(root)
    b_test = [s for s in split.test if s.class_name == "b"]
    assert sum(s.label == 0 for s in b_test) == 2 and sum(s.label == 1 for s in b_test) == 3
    assert sum(s.class_name == "a" for s in split.test) == 6
    for image in (root / "a" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert str(err.value) == f"{root / 'a'}: no normal training images found for the folder layout"


def test_unimedical_classes_and_one_class(tmp_path: Path) -> None:
    root = _make(tmp_path, "unimedical")
    assert list_classes(root, "unimedical") == ["brain", "liver", "retinal"]
    liver = load_dataset(root, class_name="liver")
    assert {s.class_name for s in liver.train + liver.test} == {"liver"}
    assert all(s.mask_path for s in liver.test if s.label == 1)


def test_single_class_sets_refuse_a_class_name(tmp_path: Path) -> None:
    root = _make(tmp_path, "headct")
    with pytest.raises(DataError) as err:
        load_dataset(root, class_name="brain")
    assert str(err.value) == f"{root}: headct set has a single class; do not pass a class name"


def test_zhanglab_root_may_be_chest_xray_itself(tmp_path: Path) -> None:
    root = _make(tmp_path, "zhanglab")
    inner = load_dataset(root / "chest_xray", "zhanglab")
    outer = load_dataset(root)
    assert [s.path for s in inner.test] == [s.path for s in outer.test]
    assert detect_format(root / "chest_xray") == "zhanglab"


def test_dicom_folder_layout(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder", image_format="dicom")
    split = load_dataset(root)
    assert all(s.path.endswith(".dcm") for s in split.train + split.test)
    assert split.has_masks
    item = ImageDataset(split.test, 32)[len(split.test) - 1]
    assert item["mask"].sum() > 0


def test_nifti_files_expand_to_one_sample_per_slice(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder", image_format="nifti")
    split = load_dataset(root)
    # 6 training slices in volumes of 4 -> 000.nii.gz (4 slices) + 001.nii.gz (2 slices)
    assert len(split.train) + len(split.holdout) == 6
    assert {s.slice_index for s in split.train + split.holdout} == {0, 1, 2, 3}
    abnormal = [s for s in split.test if s.label == 1]
    assert len(abnormal) == 3 and all(
        s.mask_path and s.mask_path.endswith("_mask.nii.gz") for s in abnormal
    )
    data = ImageDataset(abnormal, 32)
    assert all(data[i]["mask"].sum() > 0 for i in range(len(data)))


def test_brainmri_duplicates_are_removed_and_counted(tmp_path: Path) -> None:
    root = _make(tmp_path, "brainmri")
    shutil.copy(root / "no" / "N1.jpg", root / "no" / "N1_copy.jpg")
    shutil.copy(root / "yes" / "Y2.jpg", root / "no" / "N99.jpg")  # same bytes, conflicting label
    split = load_dataset(root)
    assert (
        str(root / "no" / "N1_copy.jpg"),
        f"byte-identical duplicate of {root / 'no' / 'N1.jpg'}",
    ) in split.skipped
    conflict = "byte-identical copies are labelled both yes and no"
    assert (str(root / "no" / "N99.jpg"), conflict) in split.skipped
    assert (str(root / "yes" / "Y2.jpg"), conflict) in split.skipped
    assert len(split.skipped) == 3
    used = {s.path for s in split.train + split.holdout + split.test}
    assert str(root / "yes" / "Y2.jpg") not in used and str(root / "no" / "N1.jpg") in used


# --- bad layouts ------------------------------------------------------------------------------------


def test_headct_missing_id_file(tmp_path: Path) -> None:
    root = _make(tmp_path, "headct")
    (root / "head_ct" / "004.png").unlink()
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert (
        str(err.value)
        == f"{root / 'labels.csv'}: id 4 has no image file {root / 'head_ct' / '004.png'}"
    )


def test_headct_image_without_id(tmp_path: Path) -> None:
    root = _make(tmp_path, "headct")
    shutil.copy(root / "head_ct" / "000.png", root / "head_ct" / "200.png")
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert (
        str(err.value)
        == f"{root / 'head_ct' / '200.png'}: image has no id in {root / 'labels.csv'}"
    )


def test_headct_bad_header_and_bad_row(tmp_path: Path) -> None:
    root = _make(tmp_path, "headct")
    labels = root / "labels.csv"
    text = labels.read_text()
    labels.write_text(text.replace("id, hemorrhage", "name,label"))
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert str(err.value) == f"{labels}: header must be 'id, hemorrhage' or 'id, hemorrhage, group'"
    labels.write_text(text.replace("\n3,0\n", "\n3,yes\n"))
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert str(err.value) == f"{labels}: line 5: expected '<id>, <0|1>', got '3,yes'"


def test_mask_without_image_is_a_counted_skip(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder")
    (root / "test" / "lesion" / "001.png").unlink()
    split = load_dataset(root)
    assert split.skipped == [
        (
            str(root / "ground_truth" / "lesion" / "001_mask.png"),
            "mask has no matching image in test/lesion",
        )
    ]
    assert split.has_masks


def test_anomalous_image_without_mask_turns_has_masks_off(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder")
    (root / "ground_truth" / "lesion" / "002_mask.png").unlink()
    assert load_dataset(root).has_masks is False


def test_empty_class_folder_is_a_counted_skip(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder")
    (root / "test" / "crack").mkdir()
    (root / "test" / "lesion" / "notes.txt").write_text("scanner 3\n")
    split = load_dataset(root)
    assert sorted(split.skipped) == [
        (str(root / "test" / "crack"), "empty folder: no images"),
        (str(root / "test" / "lesion" / "notes.txt"), "not an image file (unknown extension)"),
    ]


def test_no_normal_training_images(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder")
    for image in (root / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert str(err.value) == f"{root}: no normal training images found for the folder layout"


def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "scans")
    assert str(err.value) == (
        f"{tmp_path / 'scans'}: unknown dataset layout; looked for meta.json (unimedical), "
        "labels.csv + head_ct/ (headct), yes/ + no/ (brainmri), chest_xray/ or train/NORMAL (zhanglab), "
        "train/good + valid/ or test/Ungood (bmad), train/good (folder), each at the root or one level down per class"
    )


def test_ambiguous_layout(tmp_path: Path) -> None:
    root = _make(tmp_path, "headct")
    (root / "yes").mkdir()
    (root / "no").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert (
        str(err.value)
        == f"{root}: ambiguous dataset layout, matches headct and brainmri; pass the format explicitly"
    )


def test_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "absent")
    assert str(err.value) == f"{tmp_path / 'absent'}: dataset folder not found"


def test_unimedical_listed_file_missing(tmp_path: Path) -> None:
    root = _make(tmp_path, "unimedical", classes=["brain"])
    (root / "brain" / "test" / "good" / "img" / "001.png").unlink()
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert str(err.value) == (
        f"{root / 'meta.json'}: test/brain record 1: image file not found: {root / 'brain/test/good/img/001.png'}"
    )


def test_image_dataset_raises_on_a_broken_file(tmp_path: Path) -> None:
    root = _make(tmp_path, "folder")
    split = load_dataset(root)
    broken = Path(split.train[0].path)
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(DataError) as err:
        ImageDataset(split.train, 32)[0]
    assert str(err.value) == f"{broken}: truncated or corrupt PNG data"


# --- prediction inputs ---------------------------------------------------------------------------------


def test_collect_inputs_files_folders_dicom_nifti(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "a.png")
    dicom = write_dicom(folder / "sub" / "b.dcm", np.zeros((16, 16), np.uint16))
    (folder / "sub" / "IM0001").write_bytes(dicom.read_bytes())  # DICOM without an extension
    write_nifti(folder / "sub" / "c.nii.gz", np.zeros((16, 16, 3), np.float32))
    (folder / "README.txt").write_text("notes\n")  # not an image at all: ignored
    (folder / "broken.png").write_bytes(b"")  # claims to be an image: reported
    (folder / ".hidden.png").write_bytes(b"")  # hidden: ignored
    skipped: list[tuple[str, str]] = []
    samples = collect_inputs([folder, folder / "a.png"], skipped)
    keys = [Path(s.key).name for s in samples]
    # a.png given again after its folder is scored once (issue 11, case 22)
    assert keys == ["a.png", "IM0001", "b.dcm", "c.nii.gz#0", "c.nii.gz#1", "c.nii.gz#2"]
    assert all(s.label == -1 and s.kind == "unknown" for s in samples)
    assert skipped == [(str(folder / "broken.png"), "file is empty (0 bytes)")]
    with pytest.raises(DataError) as err:
        collect_inputs([folder])
    assert str(err.value) == f"{folder / 'broken.png'}: file is empty (0 bytes)"
    with pytest.raises(DataError) as err:
        collect_inputs([tmp_path / "nothing.png"])
    assert str(err.value) == f"{tmp_path / 'nothing.png'}: input not found"
    with pytest.raises(DataError) as err:
        collect_inputs([folder / "README.txt"])
    assert str(err.value) == (
        f"{folder / 'README.txt'}: not an image file (content is not PNG, JPEG, BMP, GIF, TIFF, DICOM or NIfTI)"
    )
    data = ImageDataset(samples, 16)
    assert int(data[2]["label"]) == -1


def test_sample_key_spelling() -> None:
    assert Sample("a/b.png", 0, "good").key == "a/b.png"
    assert Sample("v.nii.gz", 1, "lesion", slice_index=7).key == "v.nii.gz#7"


def test_image_dataset_batches_through_a_dataloader(tmp_path: Path) -> None:
    split = load_dataset(_make(tmp_path, "folder"))
    batch = next(iter(torch.utils.data.DataLoader(ImageDataset(split.test, 32), batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert batch["label"].dtype == torch.int64 and batch["index"].tolist() == [0, 1, 2, 3]


def test_bmad_holdout_is_valid_good_and_orphan_masks_are_counted(tmp_path: Path) -> None:
    root = _make(tmp_path, "bmad")
    (root / "test" / "Ungood" / "img" / "000.png").unlink()
    split = load_dataset(root, holdout_fraction=0.5)  # an official holdout ignores the fraction
    assert [Path(s.path).parent.parent.parent.name for s in split.holdout] == ["valid"]
    assert split.skipped == [
        (
            str(root / "test" / "Ungood" / "label" / "000.png"),
            "mask has no matching image in test/Ungood/img",
        )
    ]


def test_unimedical_anomalous_train_record_is_a_counted_skip(tmp_path: Path) -> None:
    import json

    root = _make(tmp_path, "unimedical", classes=["brain"])
    meta = json.loads((root / "meta.json").read_text())
    meta["train"]["brain"][0]["anomaly"] = 1
    (root / "meta.json").write_text(json.dumps(meta))
    split = load_dataset(root)
    assert split.skipped == [
        (str(root / "brain/train/good/img/000.png"), "anomalous image in a train list")
    ]
    assert len(split.train) + len(split.holdout) == 5


@pytest.mark.parametrize("name", ["Good", "GOOD", "normal", "Normal"])
def test_normal_test_folder_in_any_case_is_normal(tmp_path: Path, name: str) -> None:
    """Issue 11 case 14. Kills: comparing the folder name with "good" case-sensitively (the normal
    images then become anomaly kind "Good", label 1)."""
    root = _make(tmp_path, "folder")
    (root / "test" / "good").rename(root / "test" / name)
    (root / "train" / "good").rename(root / "train" / "Good")
    split = load_dataset(root)
    normals = [s for s in split.test if Path(s.path).parent.name == name]
    assert len(normals) == 3 and {(s.label, s.kind) for s in normals} == {(0, "good")}
    assert {s.kind for s in split.test if s.label == 1} == {"lesion"}
    assert len(split.train) + len(split.holdout) == 6


@pytest.mark.timeout(60)
def test_non_regular_files_are_counted_skips_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 case 26. Kills: opening entries that are not regular files (a FIFO named zz.png
    blocked `pdd fit` for ever) or dropping them without a skip."""
    import socket

    root = _make(tmp_path, "folder")
    os.mkfifo(root / "train" / "good" / "zz.png")
    (root / "train" / "good" / "null.png").symlink_to("/dev/null")
    (root / "test" / "good" / "gone.png").symlink_to(root / "nowhere.png")
    os.mkfifo(root / "ground_truth" / "lesion" / "001_mask.png.fifo.png")
    monkeypatch.chdir(root / "test" / "lesion")
    server = socket.socket(socket.AF_UNIX)
    server.bind("sock.png")
    try:
        split = load_dataset(root)
    finally:
        server.close()
    assert sorted(split.skipped) == sorted(
        [
            (str(root / "train" / "good" / "zz.png"), "not a regular file (named pipe)"),
            (str(root / "train" / "good" / "null.png"), "not a regular file (device)"),
            (str(root / "test" / "good" / "gone.png"), "broken symbolic link"),
            (
                str(root / "ground_truth" / "lesion" / "001_mask.png.fifo.png"),
                "not a regular file (named pipe)",
            ),
            (str(root / "test" / "lesion" / "sock.png"), "not a regular file (socket)"),
        ]
    )
    assert len(split.train) + len(split.holdout) == 6 and len(split.test) == 6


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout, name", [("headct", "labels.csv"), ("unimedical", "meta.json")])
def test_a_named_pipe_as_layout_metadata_is_an_error(
    tmp_path: Path, layout: str, name: str
) -> None:
    """Issue 11 case 26 for labels.csv / meta.json: refused by name instead of blocking."""
    root = _make(tmp_path, layout)
    (root / name).unlink()
    os.mkfifo(root / name)
    with pytest.raises(DataError) as err:
        load_dataset(root, layout)
    what = "labels file" if layout == "headct" else "meta.json"
    assert str(err.value) == f"{root / name}: cannot read {what}: not a regular file (named pipe)"


@pytest.mark.timeout(60)
def test_bmad_mask_folder_fifo_is_a_counted_skip(tmp_path: Path) -> None:
    root = _make(tmp_path, "bmad")
    fifo = root / "test" / "Ungood" / "label" / "zz.png"
    os.mkfifo(fifo)
    assert (str(fifo), "not a regular file (named pipe)") in load_dataset(root).skipped


def test_unimedical_record_outside_the_root_is_refused(tmp_path: Path) -> None:
    """Issue 11 case 22 for meta.json records."""
    root = _make(tmp_path, "unimedical")
    meta = json.loads((root / "meta.json").read_text())
    meta["train"]["brain"][0]["img_path"] = "../elsewhere/000.png"
    (root / "meta.json").write_text("\ufeff" + json.dumps(meta), encoding="utf-8")  # BOM too
    with pytest.raises(DataError) as err:
        load_dataset(root, "unimedical")
    assert str(err.value) == (
        f"{root / 'meta.json'}: train/brain record 0: image '../elsewhere/000.png' is outside "
        f"the dataset folder {root}"
    )
