"""The teacher-feature cache under DDP: a real 2-process CPU fit (gloo) with ``--feature-cache
disk``, both processes pointed at one cache folder, computes each training image's features once
(by the process whose shard holds it in epoch 1), serves every later batch from the shared files,
leaves only valid entries behind, and trains exactly as the same DDP fit with ``off``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from engine_fakes import read_metrics, read_scores

from pdd.training.feature_cache import read_entry

EPOCHS, BATCH, WORLD = 3, 4, 2
RTOL = 1e-6


def _ddp_fit(data: Path, out: Path, mode: str, cache_dir: Path, records: Path) -> None:
    """``fit`` with 2 CPU processes in a fresh interpreter; each process writes its cache record
    (its own hits and misses) to ``records/rank<N>.json``."""
    script = out.parent / f"fit_{mode}.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        from pdd.training import feature_cache
        from pdd.training.runner import FitOptions, fit

        made = []
        build = feature_cache.for_training

        def recording(*args, **kwargs):
            made.append(build(*args, **kwargs))
            return made[-1]

        feature_cache.for_training = recording
        fit(FitOptions(data=Path({str(data)!r}), out=Path({str(out)!r}), preset="rd4ad",
                       teachers="random", image_size=32, epochs={EPOCHS}, batch_size={BATCH},
                       accelerator="cpu", devices={WORLD}, strategy="ddp",
                       feature_cache={mode!r}, progress=False))
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        records = Path({str(records)!r})
        records.mkdir(exist_ok=True)
        (records / f"rank{{rank}}.json").write_text(
            json.dumps(made[0].record() if made and made[0] is not None else None)
        )
    """)
    )
    env = {**os.environ, "PDD_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_ddp_processes_share_one_disk_cache_and_train_as_without(
    phantoms: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    runs = {}
    for mode in ("off", "disk"):
        _ddp_fit(
            phantoms, tmp_path / mode, mode, cache_dir, tmp_path / f"records_{mode}"
        )
        runs[mode] = (read_metrics(tmp_path / mode), read_scores(tmp_path / mode))
    (cached, cached_scores), (plain, plain_scores) = runs["disk"], runs["off"]
    assert cached["world_size"] == plain["world_size"] == WORLD

    # The loss curve and the scores are those of the same DDP fit without a cache.
    for got, want in zip(cached["train_history"], plain["train_history"], strict=True):
        assert got.keys() == want.keys()
        for name in want:
            assert math.isclose(got[name], want[name], rel_tol=RTOL, abs_tol=0), (
                name, got, want,
            )  # fmt: skip
    assert len(cached["train_history"]) == EPOCHS
    assert [row["path"] for row in cached_scores] == [
        row["path"] for row in plain_scores
    ]
    for got, want in zip(cached_scores, plain_scores, strict=True):
        assert math.isclose(float(got["score"]), float(want["score"]), rel_tol=RTOL)

    # Each process computed its own epoch-1 shard (each image once, in one process) and was
    # served every later batch from the shared folder, whichever process had written it.
    train = cached["num_train"]
    assert train % WORLD == 0  # no image repeated to even the shards
    shard = train // WORLD
    records = [
        json.loads((tmp_path / "records_disk" / f"rank{rank}.json").read_text())
        for rank in range(WORLD)
    ]
    for record in records:
        assert record["mode"] == "disk" and record["location"] == str(
            cache_dir / "features"
        )
        assert (record["misses"], record["hits"]) == (shard, (EPOCHS - 1) * shard), (
            record
        )
    assert json.loads((tmp_path / "records_off" / "rank1.json").read_text()) is None

    # One valid entry per training image: the key it is filed under, intact, rd4ad's levels.
    files = sorted((cache_dir / "features").glob("*/*.pddf"))
    assert len(files) == train
    assert not list((cache_dir / "features").glob("*/*.tmp"))
    for path in files:
        entry = read_entry(path, path.stem)
        assert sorted(entry) == [f"wide_resnet50_2.{level}" for level in (1, 2, 3)]
