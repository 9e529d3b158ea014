"""Tests for tools/inspect_task.py."""

from PIL import Image

from tools import inspect_task


def test_prints_and_draws_a_box_task(toy_data_dir, tmp_path, capsys):
  png = tmp_path / "grid.png"
  assert inspect_task.main(["refcoco", "-n", "2", f"--data_dir={toy_data_dir}", "--split=val",
                            "--image_size=32", f"--png={png}"]) == 0
  out = capsys.readouterr().out
  assert out.count("[refcoco] image (32, 32, 3)") == 2
  assert out.count("inputs : locate ") == 2 and out.count("box    : [") == 2
  assert Image.open(png).size[0] > 100
