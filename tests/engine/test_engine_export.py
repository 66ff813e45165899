"""`pdd.export`: the whole model as ONNX, run with onnxruntime, compared with PyTorch.

Tolerance: on real phantom images, |ONNX - PyTorch| <= 1e-4 * max|PyTorch| for maps and scores
(float32 graphs that differ only in operation order agree to ~1e-6 relative here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from pdd.data import to_model_input
from pdd.data.synthetic import make_phantom
from pdd.export import DEFAULT_OPSET, ExportResult, export_onnx
from pdd.runs import checkpoint
from pdd.teachers.selective_scan import (
    selective_scan_reference,
    selective_scan_traceable,
)

SMALL = {
    "teachers": "random",
    "image_size": 32,
    "teacher_options": {"vmamba_tiny_v0": {"dims": 8, "depths": [1, 1, 1, 1], "ssm_d_state": 4}},
}
RELATIVE_TOLERANCE = 1e-4


# The exporter keeps about 1 GB of traced graphs alive after it returns (2.4 GB at its peak), so
# the export runs in a child process and the test process only loads the saved model back.
_EXPORT_IN_CHILD = """
import dataclasses, json, sys
from pathlib import Path
from pdd import create_model
from pdd.export import export_onnx
from pdd.runs import checkpoint
folder, small = Path(sys.argv[1]), json.loads(sys.argv[2])
model = create_model("pdd", **small).eval()
ckpt = checkpoint.save(folder / "model.ckpt", model, threshold=1.0, map_stats={"vmin": 0.0, "vmax": 2.0})
print(json.dumps(dataclasses.asdict(export_onnx(ckpt, folder / "model.onnx")), default=str))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("export")
    child = subprocess.run(
        [sys.executable, "-c", _EXPORT_IN_CHILD, str(folder), json.dumps(SMALL)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    fields = json.loads(child.stdout.strip().splitlines()[-1])
    result = ExportResult(**{**fields, "path": Path(fields["path"]),
                             "files": tuple(Path(f) for f in fields["files"])})  # fmt: skip
    model, _meta = checkpoint.load(folder / "model.ckpt")
    return model, result


def test_onnx_matches_pytorch_on_images(exported) -> None:
    model, result = exported
    assert result.path.is_file() and result.files == (result.path,)
    assert result.image_size == 32 and result.opset == DEFAULT_OPSET
    assert result.max_map_error <= 1e-3 and result.max_score_error <= 1e-3

    graph = onnx.load(str(result.path))
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["maps", "scores"]
    assert any(op.domain in ("", "ai.onnx") and op.version == DEFAULT_OPSET for op in graph.opset_import)

    rng = np.random.default_rng(3)
    images = [np.repeat(make_phantom(rng, 40, lesion=k % 2 == 1)[0][:, :, None], 3, axis=2) for k in range(3)]
    batch = torch.stack([to_model_input(image, 32) for image in images])
    with torch.inference_mode():
        torch_maps, torch_scores = model(batch)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    maps, scores = session.run(["maps", "scores"], {"images": batch.numpy()})  # batch 3: dynamic axis
    assert maps.shape == (3, 32, 32) and scores.shape == (3,)
    map_scale = float(torch_maps.abs().max())
    np.testing.assert_allclose(maps, torch_maps.numpy(), rtol=0, atol=RELATIVE_TOLERANCE * map_scale)
    np.testing.assert_allclose(scores, torch_scores.numpy(), rtol=RELATIVE_TOLERANCE)
    np.testing.assert_allclose(scores, maps.reshape(3, -1).max(1), rtol=1e-6)  # score = max of map


def test_traceable_scan_equals_reference() -> None:
    """The scan swapped in for tracing is exact, including decays that overflow a closed form."""
    generator = torch.Generator().manual_seed(0)
    b, c, n, length, groups = 2, 6, 4, 45, 2
    u = torch.randn(b, c, length, generator=generator, dtype=torch.float64)
    delta = 4 * torch.randn(b, c, length, generator=generator, dtype=torch.float64)
    A = -torch.rand(c, n, generator=generator, dtype=torch.float64) * 30  # steep decays
    B = torch.randn(b, groups, n, length, generator=generator, dtype=torch.float64)
    C = torch.randn(b, groups, n, length, generator=generator, dtype=torch.float64)
    D = torch.randn(c, generator=generator, dtype=torch.float64)
    bias = torch.randn(c, generator=generator, dtype=torch.float64)
    expected = selective_scan_reference(u, delta, A, B, C, D, bias)
    actual = selective_scan_traceable(u, delta, A, B, C, D, bias)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    single = selective_scan_traceable(*(t.float() for t in (u, delta, A, B, C, D, bias)))
    assert torch.isfinite(single).all()
    torch.testing.assert_close(single.double(), expected, rtol=1e-4, atol=1e-4)


def test_export_refuses_missing_checkpoint(tmp_path: Path) -> None:
    from pdd.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        export_onnx(tmp_path / "none.ckpt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
