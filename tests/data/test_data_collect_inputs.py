"""`pdd predict` inputs (collect_inputs): links, duplicates, non-regular files, empty volumes.

Each case of issue 11 here used to be a silent drop or a double count; each now ends in one sample
per real file or a counted skip with its reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pdd.data import collect_inputs
from pdd.data.synthetic import write_nifti
from pdd.errors import DataError


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    return path


def test_linked_folders_are_followed_once_and_broken_links_are_counted(tmp_path: Path) -> None:
    """Case 13. ``inputs/linked`` -> a folder elsewhere; ``inputs/loop`` -> ``inputs`` itself (a
    loop: inputs/loop/linked/... is the same files again); ``dead.png`` -> nothing. Kills: not
    following links (scan.png missing), no loop guard (the walk descends inputs/loop/loop/... until
    the OS refuses, and reports those folders), ignoring broken links (no skip)."""
    scan = _png(tmp_path / "elsewhere" / "scan.png")
    inputs = tmp_path / "inputs"
    _png(inputs / "own.png")
    (inputs / "linked").symlink_to(scan.parent, target_is_directory=True)
    (inputs / "loop").symlink_to(inputs, target_is_directory=True)
    (inputs / "dead.png").symlink_to(tmp_path / "gone.png")
    skipped: list[tuple[str, str]] = []
    samples = collect_inputs([inputs], skipped)
    expected = [inputs / "linked" / "scan.png", inputs / "own.png"]
    assert [s.path for s in samples] == [str(path) for path in expected]
    assert skipped == [(str(inputs / "dead.png"), "broken symbolic link")]


def test_duplicate_inputs_are_scored_once_under_their_first_spelling(tmp_path: Path) -> None:
    """Case 22: the same file twice (two spellings), and a file with its folder. Kills: keying
    the seen-set by spelling instead of the resolved path, or keeping the last spelling."""
    a = _png(tmp_path / "in" / "a.png")
    b = _png(tmp_path / "in" / "b.png")
    other = tmp_path / "in" / "." / ".." / "in" / "a.png"
    samples = collect_inputs([a, other, tmp_path / "in", b])
    assert [s.path for s in samples] == [str(a), str(b)]
    samples = collect_inputs([tmp_path / "in", a])
    assert [s.path for s in samples] == [str(a), str(b)]


@pytest.mark.timeout(20)
def test_non_regular_files_are_skipped_and_never_opened(tmp_path: Path) -> None:
    """Case 26: a FIFO named like an image, in a folder and given directly, is a counted skip;
    a FIFO whose name is not an image is reported too (its content cannot be judged without
    opening it). Kills: opening it (the test hangs until its timeout), dropping it silently."""
    folder = tmp_path / "in"
    _png(folder / "a.png")
    os.mkfifo(folder / "zz.png")
    os.mkfifo(folder / "pipe")
    skipped: list[tuple[str, str]] = []
    samples = collect_inputs([folder], skipped)
    assert [s.path for s in samples] == [str(folder / "a.png")]
    assert skipped == [
        (str(folder / "pipe"), "not a regular file (named pipe)"),
        (str(folder / "zz.png"), "not a regular file (named pipe)"),
    ]
    skipped.clear()
    assert collect_inputs([folder / "zz.png"], skipped) == []
    assert skipped == [(str(folder / "zz.png"), "not a regular file (named pipe)")]
    with pytest.raises(DataError) as err:
        collect_inputs([folder / "zz.png"])
    assert str(err.value) == f"{folder / 'zz.png'}: not a regular file (named pipe)"


def test_nifti_without_slices_is_a_counted_skip(tmp_path: Path) -> None:
    """Case 17: a volume of shape 16 x 16 x 0 used to add no sample and no skip (rc 0).
    Kills: removing the zero-slice check (the file then vanishes without a trace)."""
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 0), np.float32), np.eye(4)), empty)
    full = write_nifti(tmp_path / "full.nii.gz", np.zeros((16, 16, 2), np.float32))
    skipped: list[tuple[str, str]] = []
    samples = collect_inputs([tmp_path], skipped)
    assert [s.key for s in samples] == [f"{full}#0", f"{full}#1"]
    assert skipped == [
        (str(empty), "NIfTI volume has 0 axial slices (16, 16, 0); there is no image in it")
    ]


def test_unreadable_nifti_headers_are_counted_skips_beside_good_files(tmp_path: Path) -> None:
    """Issue 20 cases 5 and 6 at the ``pdd predict`` input level: a NaN affine (LinAlgError
    stopped the whole run) and a complex volume (read as its real part) are skips with their
    reasons, and the good volume beside them is still collected. Kills: catching only DataError
    around a check that raises LinAlgError; dropping the voxel-type check."""
    nan = tmp_path / "nan.nii"
    img = nib.Nifti1Image(np.ones((16, 16, 2), np.float32), np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(np.eye(4), code=2)
    nib.save(img, nan)
    data = bytearray(nan.read_bytes())
    data[280:284] = np.float32(np.nan).tobytes()  # srow_x[0]
    nan.write_bytes(bytes(data))
    complex_volume = write_nifti(tmp_path / "complex.nii.gz", np.ones((16, 16, 2), np.complex64))
    good = write_nifti(tmp_path / "good.nii.gz", np.zeros((16, 16, 2), np.float32))
    skipped: list[tuple[str, str]] = []
    samples = collect_inputs([tmp_path], skipped)
    assert [s.key for s in samples] == [f"{good}#0", f"{good}#1"]
    assert [path for path, _ in skipped] == [str(complex_volume), str(nan)]
    assert "complex-valued" in skipped[0][1] and "affine holds NaN" in skipped[1][1]


def test_a_header_claiming_millions_of_slices_builds_no_sample(tmp_path: Path) -> None:
    """Case 24 at the collect_inputs level: a skip, not 20 M samples."""
    header = nib.Nifti2Header()
    header.set_data_shape((8, 8, 20_000_000))
    header.set_data_dtype(np.uint8)
    header.set_data_offset(544)
    (tmp_path / "bomb.nii").write_bytes(header.binaryblock + b"\0" * 4)
    skipped: list[tuple[str, str]] = []
    assert collect_inputs([tmp_path], skipped) == []
    assert len(skipped) == 1 and "the limit is 268435456" in skipped[0][1]
