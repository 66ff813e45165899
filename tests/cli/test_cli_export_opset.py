"""`pdd export --opset`: issue 11 case 20 (``--opset 0`` printed "opset 0" and wrote opset 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdd import export
from pdd.cli import main


@pytest.mark.parametrize("opset", ["0", "-3", "17", "x"])
def test_an_opset_the_exporter_does_not_write_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], opset: str
) -> None:
    """Refused before anything is loaded or printed as if it would be used.
    Kills: accepting any int for --opset (the old ``type=int``)."""
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"PK")
    status = main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                   "--opset", opset])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: pdd export: argument --opset: ")
    assert not (tmp_path / "m.onnx").exists()


def test_opsets_beyond_the_installed_onnx_are_refused() -> None:
    onnx = pytest.importorskip("onnx")
    highest = onnx.defs.onnx_opset_version()
    export._check_opset(export.MIN_OPSET)
    export._check_opset(highest)
    with pytest.raises(export.ExportError, match=rf"--opset {highest + 1}: must be between 18 and {highest}"):
        export._check_opset(highest + 1)


def test_the_recorded_opset_is_read_from_the_written_file(tmp_path: Path) -> None:
    """What a runtime sees is what we report: the opset in the file, not the one asked for."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    assert export._written_opset(path) == 19
