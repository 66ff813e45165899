"""Seeded splits and manifests: reproducible to the byte, never leaking a test image into training."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pdd.data import Sample, load_dataset, make_phantom_dataset, read_manifest
from pdd.data.splits import check_split, seeded_split
from pdd.errors import DataError

HEADER = "path,label,kind,split,class_name,mask_path,group\n"
LEGACY_HEADER = "path,label,kind,split,class_name,mask_path\n"  # before groups


@pytest.fixture
def headct(tmp_path: Path) -> Path:
    return make_phantom_dataset(
        tmp_path / "headct", "headct", n_train=14, n_test_normal=6, n_test_abnormal=5, size=16
    )


def test_same_seed_gives_a_byte_identical_manifest(headct: Path, tmp_path: Path) -> None:
    a = load_dataset(headct, seed=7).write_manifest(tmp_path / "a.csv")
    b = load_dataset(headct, seed=7).write_manifest(tmp_path / "b.csv")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_text().startswith(HEADER)
    c = load_dataset(headct, seed=8).write_manifest(tmp_path / "c.csv")
    assert c.read_bytes() != a.read_bytes()


def test_split_file_reproduces_the_split_exactly(headct: Path, tmp_path: Path) -> None:
    original = load_dataset(headct, seed=3)
    manifest = original.write_manifest(tmp_path / "split.csv")
    again = load_dataset(headct, split_file=manifest, seed=99)  # the seed no longer matters
    for part in ("train", "holdout", "test"):
        assert getattr(again, part) == getattr(original, part)
    assert again.write_manifest(tmp_path / "again.csv").read_bytes() == manifest.read_bytes()


def test_manifest_paths_are_relative_so_the_data_can_move(headct: Path, tmp_path: Path) -> None:
    manifest = load_dataset(headct, seed=1).write_manifest(tmp_path / "split.csv")
    assert str(headct) not in manifest.read_text()
    moved = tmp_path / "elsewhere"
    shutil.copytree(headct, moved)
    split = load_dataset(moved, split_file=manifest)
    assert all(s.path.startswith(str(moved)) for s in split.train + split.test)


def test_manifest_whose_files_are_gone(headct: Path, tmp_path: Path) -> None:
    split = load_dataset(headct, seed=0)
    manifest = split.write_manifest(tmp_path / "split.csv")
    gone = Path(split.test[0].path)
    gone.unlink()
    with pytest.raises(DataError) as err:
        load_dataset(headct, split_file=manifest)
    line = 2 + len(split.train) + len(split.holdout)
    assert str(err.value) == (
        f"{manifest}: line {line}: listed file does not exist: {gone} "
        "(a stale manifest, or one written for another dataset?)"
    )


def test_manifest_putting_a_test_image_in_train_is_refused(headct: Path, tmp_path: Path) -> None:
    split = load_dataset(headct, seed=0)
    manifest = split.write_manifest(tmp_path / "split.csv")
    normal_test = next(s for s in split.test if s.label == 0)
    rel = Path(normal_test.path).relative_to(headct).as_posix()
    manifest.write_text(manifest.read_text() + f"{rel},0,good,train,,,\n")
    with pytest.raises(DataError) as err:
        read_manifest(manifest, headct)
    assert str(err.value) == f"{manifest}: {headct / rel} is listed in both train and test"
    anomalous = next(s for s in split.test if s.label == 1)
    rel = Path(anomalous.path).relative_to(headct).as_posix()
    manifest.write_text(LEGACY_HEADER + f"{rel},1,hemorrhage,holdout,,\n")
    with pytest.raises(DataError) as err:
        read_manifest(manifest, headct)
    assert str(err.value) == f"{manifest}: {headct / rel} is anomalous but assigned to holdout"


def test_not_a_manifest(headct: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,y\n")
    with pytest.raises(DataError) as err:
        load_dataset(headct, split_file=bad)
    assert (
        str(err.value)
        == f"{bad}: not a split manifest (header must be {HEADER.strip()})"
    )
    bad.write_text(LEGACY_HEADER + "head_ct/000.png,1,hemorrhage,val,,\n")
    with pytest.raises(DataError) as err:
        load_dataset(headct, split_file=bad)
    assert str(err.value) == f"{bad}: line 2: split must be train, holdout or test, got 'val'"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_protocol_for_sets_without_an_official_split(headct: Path, seed: int) -> None:
    split = load_dataset(headct, seed=seed, test_normal_fraction=0.3, holdout_fraction=0.2)
    # 20 normals: 6 to test; 14 left, 3 (0.2 * 14 = 2.8) held out; every abnormal image is tested
    assert (len(split.train), len(split.holdout)) == (11, 3)
    assert sum(s.label == 0 for s in split.test) == 6 and sum(s.label == 1 for s in split.test) == 5
    assert not {s.key for s in split.train + split.holdout} & {s.key for s in split.test}
    assert not {s.key for s in split.train} & {s.key for s in split.holdout}


def test_seeded_split_ignores_input_order_and_varies_with_seed() -> None:
    samples = [Sample(f"{i:02d}.png", 0, "good") for i in range(40)]
    kept, taken = seeded_split(samples, 0.25, seed=5, salt=1)
    kept_rev, taken_rev = seeded_split(samples[::-1], 0.25, seed=5, salt=1)
    assert (kept, taken) == (kept_rev, taken_rev) and len(taken) == 10
    assert seeded_split(samples, 0.25, seed=6, salt=1)[1] != taken
    assert seeded_split(samples, 0.25, seed=5, salt=2)[1] != taken  # holdout draw is independent
    assert seeded_split(samples[:1], 0.25, seed=0, salt=1) == (
        samples[:1],
        [],
    )  # the last image trains


def test_nifti_slices_round_trip_through_a_manifest(tmp_path: Path) -> None:
    root = make_phantom_dataset(
        tmp_path / "nii",
        "folder",
        n_train=6,
        n_test_normal=2,
        n_test_abnormal=2,
        size=16,
        image_format="nifti",
    )
    split = load_dataset(root)
    manifest = split.write_manifest(tmp_path / "split.csv")
    assert "train/good/000.nii.gz#0,0,good,train,," in manifest.read_text()
    again = load_dataset(root, split_file=manifest)
    assert again.test == split.test and again.train == split.train and again.has_masks


def test_check_split_is_a_hard_invariant() -> None:
    normal = Sample("n.png", 0, "good")
    with pytest.raises(DataError) as err:
        check_split([normal], [], [normal], "computed split")
    assert str(err.value) == "computed split: n.png is listed in both train and test"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_phantom_dataset(
        tmp_path / "folder", "folder", n_train=4, n_test_normal=2, n_test_abnormal=2, size=16
    )


def _manifest(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "split.csv") -> Path:
    path = tmp_path / name
    path.write_text(header + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "spelling", ["train/../train/good/000.png", "./train//good/000.png", "alias.png"]
)
def test_two_spellings_of_one_file_are_one_file(folder: Path, tmp_path: Path, spelling: str) -> None:
    """Issue 11 case 15. Kills: the overlap check comparing spellings (no normalisation, or no
    realpath for a symbolic link)."""
    (folder / "alias.png").symlink_to(folder / "train" / "good" / "000.png")
    manifest = _manifest(
        tmp_path, "train/good/000.png,0,good,train,,,", f"{spelling},0,good,holdout,,,"
    )
    with pytest.raises(DataError) as err:
        read_manifest(manifest, folder)
    shown = folder / ("alias.png" if spelling == "alias.png" else "train/good/000.png")
    assert str(err.value) == f"{manifest}: {shown} is listed in both train and holdout"


def test_a_normal_row_with_a_mask_is_refused(folder: Path, tmp_path: Path) -> None:
    """Issue 11 case 16. Kills: accepting a mask on a normal image (used in pixel metrics)."""
    manifest = _manifest(
        tmp_path,
        "train/good/000.png,0,good,train,,,",
        "test/good/000.png,0,good,test,,ground_truth/lesion/000_mask.png,",
    )
    with pytest.raises(DataError) as err:
        read_manifest(manifest, folder)
    assert str(err.value) == (
        f"{manifest}: line 3: test/good/000.png is normal (label 0) but has a mask "
        "'ground_truth/lesion/000_mask.png'; only anomalous images may have one"
    )


def test_rows_outside_the_dataset_are_refused(folder: Path, tmp_path: Path) -> None:
    """Issue 11 case 22 (rows from another dataset). Kills: joining a row to the root unchecked."""
    other = make_phantom_dataset(
        tmp_path / "other", "folder", n_train=2, n_test_normal=1, n_test_abnormal=1, size=16
    )
    good = "train/good/000.png,0,good,train,,,"
    for listed in ("../other/train/good/001.png", str(other / "train" / "good" / "001.png")):
        manifest = _manifest(tmp_path, good, f"{listed},0,good,train,,,")
        with pytest.raises(DataError) as err:
            read_manifest(manifest, folder)
        assert str(err.value) == (
            f"{manifest}: line 3: file {listed!r} is outside the dataset folder {folder}"
        )
    manifest = _manifest(tmp_path, good, "test/lesion/000.png,1,lesion,test,,../other/ground_truth/lesion/000_mask.png,")
    with pytest.raises(DataError) as err:
        read_manifest(manifest, folder)
    assert "line 3: mask '../other/ground_truth/lesion/000_mask.png' is outside the dataset" in str(err.value)
    manifest = _manifest(tmp_path, good, "train/good/999.png,0,good,train,,,")
    with pytest.raises(DataError) as err:
        read_manifest(manifest, folder)
    assert str(err.value) == (
        f"{manifest}: line 3: listed file does not exist: {folder / 'train/good/999.png'} "
        "(a stale manifest, or one written for another dataset?)"
    )


def test_manifest_with_a_byte_order_mark_reads(folder: Path, tmp_path: Path) -> None:
    """Issue 11 (BOM). Kills: decoding the manifest as plain utf-8 (header then has U+FEFF)."""
    split = load_dataset(folder, seed=0)
    manifest = split.write_manifest(tmp_path / "split.csv")
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    again = load_dataset(folder, split_file=manifest)
    assert (again.train, again.holdout, again.test) == (split.train, split.holdout, split.test)


def test_old_manifest_without_a_group_column_still_reads(folder: Path, tmp_path: Path) -> None:
    split = load_dataset(folder, seed=0)
    lines = split.write_manifest(tmp_path / "new.csv").read_text().splitlines()
    old = tmp_path / "old.csv"
    old.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    assert old.read_text().startswith(LEGACY_HEADER)
    again = load_dataset(folder, split_file=old)
    assert (again.train, again.holdout, again.test) == (split.train, split.holdout, split.test)


@pytest.mark.timeout(60)
def test_a_named_pipe_as_manifest_or_row_is_refused_not_opened(
    folder: Path, tmp_path: Path
) -> None:
    """Issue 11 case 26 for manifests. Kills: opening a FIFO (blocks for ever)."""
    fifo = tmp_path / "split.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError) as err:
        load_dataset(folder, split_file=fifo)
    assert str(err.value) == f"{fifo}: cannot read split manifest: not a regular file (named pipe)"
    os.mkfifo(folder / "train" / "good" / "zz.png")
    manifest = _manifest(tmp_path, "train/good/zz.png,0,good,train,,,", name="rows.csv")
    with pytest.raises(DataError) as err:
        read_manifest(manifest, folder)
    assert str(err.value) == (
        f"{manifest}: line 2: listed file {folder / 'train/good/zz.png'}: not a regular file (named pipe)"
    )


def test_class_name_selects_its_rows_of_a_manifest(tmp_path: Path) -> None:
    """Kills: a class's run given a multi-class manifest training on every class's rows."""
    root = make_phantom_dataset(
        tmp_path / "mc", "folder", n_train=4, n_test_normal=1, n_test_abnormal=1, size=16,
        classes=["a", "b"],
    )  # fmt: skip
    split = load_dataset(root, seed=0)
    manifest = split.write_manifest(tmp_path / "split.csv")
    only_b = load_dataset(root, split_file=manifest, class_name="b")
    assert only_b.class_name == "b"
    assert only_b.train == [s for s in split.train if s.class_name == "b"] and only_b.train
    assert only_b.test == [s for s in split.test if s.class_name == "b"]
    with pytest.raises(DataError) as err:
        load_dataset(root, split_file=manifest, class_name="c")
    assert str(err.value) == f"{manifest}: manifest has no rows of class 'c' (classes: a, b)"
