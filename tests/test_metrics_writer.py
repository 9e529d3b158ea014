"""Tests of the results/predictions writers and the optional captioning metrics."""

import builtins
import json

import numpy as np
import pytest

from dynpt import metrics


def test_write_results_json_and_table(tmp_path, capsys):
  path = metrics.write_results({"vqa_accuracy": np.float32(61.25), "num": 3}, tmp_path / "eval",
                               "vqav2_val")
  assert path.name == "vqav2_val.json"
  data = json.loads(path.read_text())
  assert data == {"task": "vqav2_val", "metrics": {"vqa_accuracy": 61.25, "num": 3}}
  printed = capsys.readouterr().out
  assert "vqav2_val" in printed and "vqa_accuracy" in printed and "61.2500" in printed


def test_write_results_rejects_path_like_task_names(tmp_path):
  with pytest.raises(ValueError, match="task_name"):
    metrics.write_results({"a": 1.0}, tmp_path, "../escape")


def test_format_table_aligns_rows():
  table = metrics.format_table({"gqa": {"accuracy": 50.0}, "refcoco_val": {"acc@0.5": 12.5}})
  lines = table.splitlines()
  assert lines[0].split() == ["task", "metric", "value"]
  assert lines[2].split() == ["gqa", "accuracy", "50.0000"]
  assert lines[3].split() == ["refcoco_val", "acc@0.5", "12.5000"]
  assert len({line.index(line.split()[1]) for line in lines[2:]}) == 1  # one column start


def test_dump_predictions_jsonl(tmp_path):
  path = metrics.dump_predictions(tmp_path, "gqa_val", [b"yes", "no"],
                                  targets=[{"answers": np.array([b"yes"])}, "no"],
                                  extra=[{"image_id": "a"}, {"image_id": "b"}])
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert lines == [
      {"index": 0, "prediction": "yes", "target": {"answers": ["yes"]}, "image_id": "a"},
      {"index": 1, "prediction": "no", "target": "no", "image_id": "b"},
  ]
  with pytest.raises(ValueError, match="1 targets for 2 predictions"):
    metrics.dump_predictions(tmp_path, "gqa_val", ["a", "b"], targets=["a"])


def test_caption_metrics_without_pycocoevalcap_says_how_to_install(monkeypatch):
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name.startswith("pycocoevalcap"):
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  with pytest.raises(ImportError, match="pip install pycocoevalcap"):
    metrics.caption_metrics(["a dog"], [["a dog"]])


def test_caption_metrics_scores():
  pytest.importorskip("pycocoevalcap")
  refs = [["a dog runs on the grass", "a dog running in a field"],
          ["two cats sleep on a sofa", "cats asleep on a couch"]]
  perfect = metrics.caption_metrics([r[0] for r in refs], refs)
  worse = metrics.caption_metrics(["a bird", "a car on a road"], refs)
  assert perfect["bleu4"] > 0.9 and perfect["cider"] > worse["cider"]
  with pytest.raises(ValueError, match="references\\[0\\]"):
    metrics.caption_metrics(["a"], ["a"])
