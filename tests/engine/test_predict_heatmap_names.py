"""`pdd predict` names each overlay after its file AND the folder it sits in (issue 23, point 4):
``test/good/000.png`` and ``test/tumor/000.png`` used to both end in ``_000.png``, so a reader could
not tell which file a heatmap belongs to."""

from __future__ import annotations

from pdd.data.sample import Sample
from pdd.data.scans import IMAGE, Scan
from pdd.prediction.plan import Plan


def _image(path: str) -> Scan:
    return Scan(path, IMAGE, [Sample(path, -1, "")])


def test_overlay_names_keep_the_parent_folder() -> None:
    """Kills: dropping the folder (the old ``<index>_<stem>.png``)."""
    plan = Plan.build(
        [_image("/data/test/good/000.png"), _image("/data/test/tumor/000.png"),
         _image("/data/scans/patient 7 (left)/slice.tif"), _image("lone.png")],
        overlays=True,
    )
    assert [scan.output for scan in plan.scans] == [
        "heatmaps/00000_good_000.png",
        "heatmaps/00001_tumor_000.png",
        "heatmaps/00002_patient_7_left_slice.png",
        "heatmaps/00003_lone.png",
    ]


def test_no_overlays_no_names() -> None:
    plan = Plan.build([_image("/data/test/good/000.png")], overlays=False)
    assert plan.scans[0].output == ""
