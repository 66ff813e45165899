"""Group-aware splits: a volume, a DICOM series/patient, a ``group_by`` match or a ``group`` column
never crosses train / holdout / test. The reference for "which images belong together" is always
recomputed here from the files (volume path, file-name prefix, DICOM ids we wrote), never read back
from ``Sample.group``, so a split that cuts a group fails these tests even when the group field
itself is wrong."""

from __future__ import annotations

import csv
import math
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pdd.data import Sample, load_dataset, make_phantom_dataset
from pdd.data.splits import seeded_split
from pdd.data.synthetic import make_phantom, write_dicom
from pdd.errors import DataError

SEEDS = range(5)
TCGA = r"TCGA_[A-Z0-9]+_[A-Z0-9]+"
# patient -> number of slices; 30 normal slices in 7 patients of unequal size
PATIENTS = {"TCGA_CS_4941": 2, "TCGA_CS_4942": 7, "TCGA_DU_5849": 3, "TCGA_DU_7008": 5,
            "TCGA_FG_5962": 4, "TCGA_HT_7690": 6, "TCGA_EZ_7264": 3}  # fmt: skip


def _sets_of(split, group_of) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    """reference group -> the sets it appears in."""
    where: dict[str, set[str]] = defaultdict(set)
    for name in ("train", "holdout", "test"):
        for sample in getattr(split, name):
            where[group_of(sample)].add(name)
    return where


def _nifti_set(tmp_path: Path) -> Path:
    """A folder set without test/good: 32 training slices in 8 volumes of 4, 3 anomalous slices."""
    root = make_phantom_dataset(
        tmp_path / "nii", "folder", n_train=32, n_test_normal=1, n_test_abnormal=3, size=16,
        image_format="nifti",
    )  # fmt: skip
    shutil.rmtree(root / "test" / "good")
    return root


def _tcga_set(tmp_path: Path) -> Path:
    """A 2-D folder set without test/good whose PNG names carry the patient, LGG-style."""
    root = make_phantom_dataset(
        tmp_path / "lgg", "folder", n_train=30, n_test_normal=1, n_test_abnormal=2, size=16
    )
    shutil.rmtree(root / "test" / "good")
    images = iter(sorted((root / "train" / "good").iterdir()))
    for patient, count in PATIENTS.items():
        for index in range(count):
            next(images).rename(root / "train" / "good" / f"{patient}_19960909_{index + 1}.png")
    for index in range(2):  # the anomalous patients, with their masks
        name = f"TCGA_LS_{index:04d}_19960909_1"
        (root / "test" / "lesion" / f"{index:03d}.png").rename(root / "test" / "lesion" / f"{name}.png")
        mask = root / "ground_truth" / "lesion" / f"{index:03d}_mask.png"
        mask.rename(mask.with_name(f"{name}_mask.png"))
    return root


@pytest.mark.parametrize("seed", SEEDS)
def test_nifti_volumes_never_cross_sets(tmp_path: Path, seed: int) -> None:
    """Kills: a slice-level draw (seeded_split keyed on Sample.key instead of the group), and
    groups not assigned to NIfTI slices."""
    root = _nifti_set(tmp_path)
    split = load_dataset(root, seed=seed)
    where = _sets_of(split, lambda s: s.path)  # the volume file itself
    assert all(len(sets) == 1 for sets in where.values()), where
    normals = [s for s in split.test if s.label == 0]
    # 25 % of 32 slices = 8 = two whole volumes; then 10 % of 24 = 2.4 -> the closest is one volume
    assert len(normals) == 8 and len({s.path for s in normals}) == 2
    assert len(split.holdout) == 4 and len({s.path for s in split.holdout}) == 1
    assert split.group_counts() == {
        name: len({s.path for s in getattr(split, name)}) for name in ("train", "holdout", "test")
    }
    rows = list(csv.DictReader(split.write_manifest(tmp_path / "split.csv").open()))
    assert all(row["group"] == row["path"].split("#")[0] for row in rows)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("pattern", [TCGA, rf"({TCGA})_\d+_\d+\.png"])
def test_group_by_keeps_each_patient_in_one_set(tmp_path: Path, seed: int, pattern: str) -> None:
    """Kills: group_by ignored (each PNG its own group), and a pattern's group 1 not used."""
    root = _tcga_set(tmp_path)
    split = load_dataset(root, seed=seed, group_by=pattern)
    where = _sets_of(split, lambda s: "_".join(Path(s.path).name.split("_")[:3]))
    normal_patients = {g: sets for g, sets in where.items() if g in PATIENTS}
    assert len(normal_patients) == 7 and all(len(sets) == 1 for sets in normal_patients.values())
    assert {s.group for s in split.train} <= set(PATIENTS)
    normals = [s for s in split.test if s.label == 0]
    assert normals and split.holdout and split.train
    # whole patients only, so the image count is a sum of patient sizes
    test_patients = {s.group for s in normals}
    assert len(normals) == sum(PATIENTS[p] for p in test_patients)  # type: ignore[index]


def test_without_group_by_the_same_set_is_split_per_image(tmp_path: Path) -> None:
    """The control for the test above: without the pattern some patient does cross (so that test
    can fail), which is exactly the leak group_by exists to stop."""
    root = _tcga_set(tmp_path)
    crossed = 0
    for seed in SEEDS:
        split = load_dataset(root, seed=seed)
        where = _sets_of(split, lambda s: "_".join(Path(s.path).name.split("_")[:3]))
        crossed += sum(len(sets) > 1 for sets in where.values())
    assert crossed > 0


def test_group_by_errors_name_the_file_or_the_pattern(tmp_path: Path) -> None:
    root = _tcga_set(tmp_path)
    stray = root / "train" / "good" / "scan_7.png"
    shutil.copy(next((root / "train" / "good").iterdir()), stray)
    with pytest.raises(DataError) as err:
        load_dataset(root, group_by=TCGA)
    assert str(err.value) == f"{stray}: file name does not match the group_by pattern {TCGA!r}"
    with pytest.raises(DataError) as err:
        load_dataset(root, group_by="TCGA_(")
    assert str(err.value).startswith("group_by 'TCGA_(': not a valid regular expression (")


def _move_one_row(manifest: Path, source: str, target: str, drop_group: bool = False) -> str:
    """Hand-edit a manifest: the first row of ``source`` goes to ``target``; returns its path."""
    rows = list(csv.reader(manifest.open()))
    row = next(r for r in rows[1:] if r[3] == source)
    row[3] = target
    if drop_group:
        rows = [r[:6] for r in rows]
    with manifest.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return row[0]


@pytest.mark.parametrize("drop_group", [False, True], ids=["with-group", "legacy-no-group"])
def test_manifest_putting_one_volume_in_train_and_test_is_refused(
    tmp_path: Path, drop_group: bool
) -> None:
    """Kills: check_split without the group check (keys alone include the slice index), and an
    old manifest (no group column) read without rebuilding the volume groups."""
    root = _nifti_set(tmp_path)
    manifest = load_dataset(root, seed=0).write_manifest(tmp_path / "split.csv")
    load_dataset(root, split_file=manifest)  # the untouched manifest is fine
    key = _move_one_row(manifest, "train", "test", drop_group)
    with pytest.raises(DataError) as err:
        load_dataset(root, split_file=manifest)
    volume = key.split("#")[0]
    assert str(err.value) == (
        f"{manifest}: group {volume!r} is in train and test; all images of one volume, series, "
        "patient or group must be in one set"
    )


def test_renaming_a_group_in_the_manifest_does_not_split_a_volume(tmp_path: Path) -> None:
    """Kills: trusting the manifest's group column alone."""
    root = _nifti_set(tmp_path)
    manifest = load_dataset(root, seed=1).write_manifest(tmp_path / "split.csv")
    rows = list(csv.reader(manifest.open()))
    row = next(r for r in rows[1:] if r[3] == "holdout")
    row[3], row[6] = "test", "a-different-patient"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    with pytest.raises(DataError, match="is in holdout and test"):
        load_dataset(root, split_file=manifest)


def test_group_column_round_trips_and_merges_rows(tmp_path: Path) -> None:
    """A manifest's group column ties rows together; the split record round-trips with it."""
    root = _tcga_set(tmp_path)
    split = load_dataset(root, seed=2, group_by=TCGA)
    manifest = split.write_manifest(tmp_path / "split.csv")
    again = load_dataset(root, split_file=manifest)  # no pattern needed: the column carries it
    assert (again.train, again.holdout, again.test) == (split.train, split.holdout, split.test)
    assert again.group_counts() == split.group_counts()
    _move_one_row(manifest, "train", "holdout")
    with pytest.raises(DataError, match=r"group 'TCGA_[A-Z0-9_]+' is in train and holdout"):
        load_dataset(root, split_file=manifest)


def _dicom_set(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Folder set, no test/good: 12 normal DICOM files; returns file name -> expected group."""
    root = tmp_path / "dcm"
    rng = np.random.default_rng(0)
    expected: dict[str, str] = {}

    def put(folder: str, name: str, series: str, patient: str, group: str) -> None:
        pixels = np.round(make_phantom(rng, 16, lesion=folder != "good")[0] * 1000)
        write_dicom(root / ("train" if folder == "good" else "test") / folder / name,
                    pixels.astype(np.uint16), uid_seed=series, patient_id=patient)  # fmt: skip
        expected[name] = group

    # patient P1: two series; P2: one series; no PatientID: grouped by series only;
    # series s5 carries P3 on one file only: the whole series is P3's
    for i in range(3):
        put("good", f"p1a{i}.dcm", "s1", "P1", "patient:P1")
        put("good", f"p1b{i}.dcm", "s2", "P1", "patient:P1")
    for i in range(2):
        put("good", f"p2{i}.dcm", "s3", "P2", "patient:P2")
        put("good", f"anon{i}.dcm", "s4", "", "series")
        put("good", f"mixed{i}.dcm", "s5", "P3" if i == 0 else "", "patient:P3")
    put("good", "single.dcm", "s6", "", "series")
    put("lesion", "bad0.dcm", "s7", "P9", "patient:P9")
    return root, expected


@pytest.mark.parametrize("seed", SEEDS)
def test_dicom_series_and_patients_stay_whole(tmp_path: Path, seed: int) -> None:
    """Kills: DICOM files grouped per file (patient/series ignored) and no union across keys."""
    root, expected = _dicom_set(tmp_path)
    split = load_dataset(root, seed=seed)
    reference = {
        name: group if group != "series" else name[:4] for name, group in expected.items()
    }
    where = _sets_of(split, lambda s: reference[Path(s.path).name])
    assert all(len(sets) == 1 for sets in where.values()), where
    groups = {Path(s.path).name: s.group for s in split.train + split.holdout + split.test}
    for name, group in expected.items():
        if group == "series":
            assert groups[name].startswith("series:")  # type: ignore[union-attr]
        else:
            assert groups[name] == group


def test_labels_csv_group_column(tmp_path: Path) -> None:
    """HeadCT-style labels.csv with a group column: rows sharing a group stay in one set."""
    root = make_phantom_dataset(
        tmp_path / "headct", "headct", n_train=14, n_test_normal=6, n_test_abnormal=4, size=16
    )
    lines = (root / "labels.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    with_groups = [f"{lines[0]}, group"] + [f"{i},{y},pt{int(i) // 3}" for i, y in rows]
    (root / "labels.csv").write_text("\n".join(with_groups) + "\n")
    patient = {f"{int(i):03d}.png": f"pt{int(i) // 3}" for i, _ in rows}
    for seed in SEEDS:
        split = load_dataset(root, seed=seed)
        where = _sets_of(split, lambda s: patient[Path(s.path).name])
        assert all(len(sets) == 1 for sets in where.values()), where


def test_published_split_crossing_is_a_warning_and_kept(tmp_path: Path) -> None:
    """ZhangLab's official split is kept as given; a patient in train and test is only warned
    about, by name. The same crossing in a folder set (user-made) is an error."""
    root = make_phantom_dataset(
        tmp_path / "zl", "zhanglab", n_train=4, n_test_normal=3, n_test_abnormal=2, size=16
    )
    base = root / "chest_xray"
    for i, image in enumerate(sorted((base / "train" / "NORMAL").iterdir())):
        image.rename(image.with_name(f"IM-{i:04d}-0001.jpeg"))
    for i, image in enumerate(sorted((base / "test" / "NORMAL").iterdir())):
        image.rename(image.with_name(f"IM-{i + 10:04d}-0001.jpeg"))
    plain = load_dataset(root)
    shared = base / "test" / "NORMAL" / "IM-0000-0002.jpeg"  # patient 0000 also trains
    (base / "test" / "NORMAL" / "IM-0010-0001.jpeg").rename(shared)
    with pytest.warns(UserWarning, match=r"published split kept as given, but group 'IM-0000'"):
        split = load_dataset(root, group_by=r"IM-\d+|person\d+")
    assert {s.path for s in split.test} == {s.path for s in plain.test} - {
        str(base / "test" / "NORMAL" / "IM-0010-0001.jpeg")
    } | {str(shared)}
    assert len(split.train) + len(split.holdout) == len(plain.train) + len(plain.holdout)
    manifest = split.write_manifest(tmp_path / "zl.csv")
    with pytest.warns(UserWarning, match=r"group 'IM-0000'"):  # its manifest reproduces it
        again = load_dataset(root, split_file=manifest)
    assert (again.train, again.holdout, again.test) == (split.train, split.holdout, split.test)

    folder = make_phantom_dataset(
        tmp_path / "f", "folder", n_train=4, n_test_normal=2, n_test_abnormal=1, size=16
    )
    (folder / "test" / "good" / "000.png").rename(folder / "test" / "good" / "pt_a.png")
    (folder / "train" / "good" / "000.png").rename(folder / "train" / "good" / "pt_a.png")
    for image in (folder / "train" / "good").glob("00*.png"):
        image.rename(image.with_name(f"pt_{image.stem}.png"))
    for image in (folder / "test").rglob("00*.png"):
        image.rename(image.with_name(f"pt_t{image.stem}.png"))
    with pytest.raises(DataError, match=r"group 'pt_a' is in (train|holdout) and test"):
        load_dataset(folder, group_by=r"pt_[a-z0-9]+")


def test_a_single_group_cannot_be_split(tmp_path: Path) -> None:
    root = _tcga_set(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(root, group_by=r"TCGA(?!_LS)|TCGA_LS_\d+")
    assert str(err.value) == (
        f"{root}: cannot hold out test normal images: all 30 belong to group 'TCGA' "
        "(one volume, series, patient or group), which must stay in one set"
    )
    with pytest.raises(DataError) as err:  # the lesion patient is every normal image's patient
        load_dataset(root, group_by=r"TCGA")
    assert str(err.value) == (
        f"{root}: no normal training images left: every normal image shares a group "
        "with an anomalous (tested) image"
    )


def _old_per_image_draw(samples: list[Sample], fraction: float, seed: int, salt: int):  # type: ignore[no-untyped-def]
    """The per-image draw of earlier versions, re-typed as the reference."""
    ordered = sorted(samples, key=lambda s: (s.class_name or "", s.key))
    n = len(ordered)
    n_taken = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    taken = set(np.random.default_rng([seed, salt]).permutation(n)[:n_taken].tolist())
    return (
        [s for i, s in enumerate(ordered) if i not in taken],
        [s for i, s in enumerate(ordered) if i in taken],
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_one_image_per_group_reproduces_the_per_image_split(seed: int) -> None:
    """Old 2-D split.csv files stay reproducible: singletons draw exactly as before."""
    samples = [Sample(f"{i:02d}.png", 0, "good") for i in range(23)]
    for fraction, salt in ((0.25, 1), (0.1, 2), (0.5, 1)):
        assert seeded_split(samples, fraction, seed, salt) == _old_per_image_draw(
            samples, fraction, seed, salt
        )


def test_group_draw_is_deterministic_whole_and_close_to_the_target() -> None:
    sizes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # 55 images, target 25 % = 14
    samples = [
        Sample(f"g{g}_{i}.png", 0, "good", group=f"g{g}") for g, n in enumerate(sizes) for i in range(n)
    ]
    draws = set()
    for seed in SEEDS:
        kept, taken = seeded_split(samples, 0.25, seed, 1)
        assert (kept, taken) == seeded_split(samples[::-1], 0.25, seed, 1)
        assert not {s.group for s in kept} & {s.group for s in taken}
        assert sorted(kept + taken, key=lambda s: s.path) == sorted(samples, key=lambda s: s.path)
        assert abs(len(taken) - 14) <= 2, len(taken)
        draws.add(frozenset(s.group for s in taken))
    assert len(draws) > 1  # the seed matters
