"""The Beam conversion pipeline: sharding, resume, plan changes, loud failures, the CLI."""

import json
import logging
import os
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from dynpt import converters
from dynpt.data import schema
from dynpt.converters import beam_pipeline
from dynpt.converters import fs
from dynpt.converters import images
from dynpt.converters import shards
from dynpt.converters import staging
from tests.test_convert_helpers import (IN_MEMORY, by_id, run, skipped_lines, write,
                                        write_jpeg)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snli_raw(raw, n=7, images=None, split_file="snli_ve_train.jsonl"):
  rows = [{"Flickr30K_ID": str(i), "sentence2": f"hypothesis {i}", "gold_label": "neutral"}
          for i in range(n)]
  write(str(raw / split_file), "\n".join(json.dumps(r) for r in rows) + "\n")
  for i in range(n if images is None else images):
    write_jpeg(str(raw / f"flickr30k-images/{i}.jpg"), seed=i)


def _shard_files(out, split="train"):
  return sorted(f for f in os.listdir(out / "snli_ve" / split) if ".tfrecord-" in f)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # Busy CI hosts.
@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=4),
       st.integers(1, 50))
def test_item_keys_are_canonical_and_shards_in_range(item, num_shards):
  reordered = dict(reversed(list(item.items())))
  assert shards.item_key(item) == shards.item_key(reordered)
  assert 0 <= shards.shard_of(shards.item_key(item), num_shards) < num_shards


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.text(max_size=3)),
                max_size=30), st.integers(1, 5), st.randoms())
def test_skip_examples_merge_in_any_grouping(skips, parts, rng):
  shuffled = list(skips)
  rng.shuffle(shuffled)
  chunks = [beam_pipeline._merge_examples(shuffled[i::parts]) for i in range(parts)]
  assert beam_pipeline._merge_examples(chunks) == beam_pipeline._merge_examples(skips)
  for reason, (count, examples) in beam_pipeline._merge_examples(skips).items():
    assert count == sum(r == reason for r, _ in skips)
    assert examples == sorted({w for r, w in skips if r == reason})[:3]


def test_default_num_shards():
  assert shards.default_num_shards(0, 10) == 1
  assert shards.default_num_shards(21, 10) == 3


def test_resume_rewrites_only_missing_shards(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw)
  first, recs = run("snli_ve", raw, out, "train", num_shards=3)
  assert (first["written"], first["shards_written"], first["shards_resumed"]) == (7, 3, 0)
  assert first["status"] == "ok" and first["skipped"] == {}
  shard1 = schema.shard_path(str(out), "snli_ve", "train", 1, 3)
  os.remove(shard1)
  shard0 = schema.shard_path(str(out), "snli_ve", "train", 0, 3)
  mtime0 = os.path.getmtime(shard0)
  second, recs2 = run("snli_ve", raw, out, "train", num_shards=3)
  assert (second["written"], second["shards_written"], second["shards_resumed"]) == (7, 1, 2)
  assert os.path.exists(shard1) and os.path.getmtime(shard0) == mtime0
  assert sorted(by_id(recs2)) == sorted(by_id(recs))
  saved = json.loads((out / "snli_ve/train/conversion_summary.json").read_text())
  assert saved["written"] == 7 and saved["shards_resumed"] == 2
  assert skipped_lines(out, "snli_ve", "train") == []


def test_added_images_redo_their_shards_and_a_new_plan_replaces_the_old(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=7, images=5)
  first, _ = run("snli_ve", raw, out, "train", records_per_shard=100,
                 max_skip_fraction=0.5)
  assert (first["written"], first["skipped"]) == (5, {"missing_image": 2})
  for i in (5, 6):  # The missing images arrive; the plan (1 shard) is unchanged.
    write_jpeg(str(raw / f"flickr30k-images/{i}.jpg"), seed=i)
  second, recs = run("snli_ve", raw, out, "train", records_per_shard=100)
  assert (second["written"], second["shards_written"], second["skipped"]) == (7, 1, {})
  assert len(recs) == 7 and skipped_lines(out, "snli_ve", "train") == []
  _snli_raw(raw, n=9)  # Two more rows: 9 items at 4 per shard is a 3-shard plan.
  third, recs = run("snli_ve", raw, out, "train", records_per_shard=4)
  assert (third["written"], third["num_shards"], third["shards_removed"]) == (9, 3, 1)
  assert _shard_files(out) == [f"snli_ve-train.tfrecord-0000{i}-of-00003" for i in range(3)]
  assert len(recs) == 9
  # A fixed shard count over the same items keeps the unchanged shards.
  _snli_raw(raw, n=10)
  fourth, _ = run("snli_ve", raw, out, "train", num_shards=3)
  assert fourth["written"] == 10 and fourth["shards_written"] == 1
  assert fourth["shards_resumed"] == 2


def test_interrupted_run_publishes_nothing_and_resumes_from_staging(tmp_path, monkeypatch):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=6)
  real = shards._commit

  def killed_at_shard_1(tmp, path, result):
    if result.index == 1:
      raise RuntimeError("killed")
    return real(tmp, path, result)

  monkeypatch.setattr(shards, "_commit", killed_at_shard_1)
  with pytest.raises(RuntimeError, match="killed"):
    run("snli_ve", raw, out, "train", num_shards=3)
  assert not (out / "snli_ve/train").exists()  # Nothing half-done is published.
  stage = out / "snli_ve/.staging-train"
  done = sorted(f for f in os.listdir(stage) if ".tfrecord-" in f and f[0] != ".")
  assert len(done) < 3
  monkeypatch.setattr(shards, "_commit", real)
  summary, recs = run("snli_ve", raw, out, "train", num_shards=3)
  assert (summary["shards_resumed"], summary["shards_written"]) == (len(done), 3 - len(done))
  assert len(recs) == 6 and summary["published"] and not stage.exists()
  assert _shard_files(out) == [f"snli_ve-train.tfrecord-0000{i}-of-00003" for i in range(3)]


def _killed_at_shard(monkeypatch, index):
  real = shards._commit

  def commit(tmp, path, result):
    if result.index == index:
      raise RuntimeError("killed")
    return real(tmp, path, result)

  monkeypatch.setattr(shards, "_commit", commit)


def test_a_failing_overwrite_rerun_keeps_the_published_split(tmp_path, monkeypatch):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=7)
  run("snli_ve", raw, out, "train", records_per_shard=100)
  _snli_raw(raw, n=9)  # 9 items at 4 per shard: a 3-shard plan.
  _killed_at_shard(monkeypatch, 1)
  with pytest.raises(RuntimeError, match="killed"):
    run("snli_ve", raw, out, "train", records_per_shard=4, overwrite=True)
  # The earlier output is whole and alone: one plan, readable, its summary.
  assert _shard_files(out) == ["snli_ve-train.tfrecord-00000-of-00001"]
  assert len(schema.read_records(str(out), "snli_ve", "train")) == 7
  assert json.loads((out / "snli_ve/train/conversion_summary.json").read_text())[
      "written"] == 7
  monkeypatch.undo()
  summary, recs = run("snli_ve", raw, out, "train", records_per_shard=4)
  assert (summary["num_shards"], summary["shards_removed"], len(recs)) == (3, 1, 9)
  assert _shard_files(out) == [f"snli_ve-train.tfrecord-0000{i}-of-00003" for i in range(3)]
  assert sorted(os.listdir(out / "snli_ve")) == ["train"]


def test_a_failed_run_does_not_replace_an_ok_split(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=4)
  run("snli_ve", raw, out, "train")
  os.rename(raw / "flickr30k-images", raw / "elsewhere")  # E.g. an unmounted disk.
  summary, _ = run("snli_ve", raw, out, "train", overwrite=True)
  stage = out / "snli_ve/.staging-train"
  assert summary["status"] == "failed" and not summary["published"]
  assert summary["output_dir"] == str(stage)
  assert "not published" in converters.format_summary(summary)
  assert len(schema.read_records(str(out), "snli_ve", "train")) == 4
  assert json.loads((out / "snli_ve/train/conversion_summary.json").read_text())[
      "status"] == "ok"
  assert len((stage / "skipped.jsonl").read_text().splitlines()) == 4
  # A run killed between the swap's two renames: the next run first restores the split.
  os.rename(out / "snli_ve/train", out / "snli_ve/.replaced-train")
  conv = converters.get_converter("snli_ve", converters.ConvertOptions(raw_dir=str(raw)))
  staging.recover(staging.SplitPlan(conv, "train", str(out), None, 100, False))
  assert len(schema.read_records(str(out), "snli_ve", "train")) == 4
  os.rename(raw / "elsewhere", raw / "flickr30k-images")
  summary, recs = run("snli_ve", raw, out, "train")
  assert summary["status"] == "ok" and summary["published"] and len(recs) == 4
  assert sorted(os.listdir(out / "snli_ve")) == ["train"]


def test_a_shards_state_is_committed_after_the_shard(tmp_path, monkeypatch, caplog):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=3)
  run("snli_ve", raw, out, "train", num_shards=1)
  rows = [{"Flickr30K_ID": str(i), "sentence2": f"changed {i}", "gold_label": "neutral"}
          for i in range(3)]
  write(str(raw / "snli_ve_train.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
  real = fs.rename

  def killed_at_shard_rename(src, dst):
    if os.path.basename(src).startswith(".tmp-snli_ve"):
      raise RuntimeError("killed")
    return real(src, dst)

  monkeypatch.setattr(fs, "rename", killed_at_shard_rename)
  with pytest.raises(RuntimeError, match="killed"):
    run("snli_ve", raw, out, "train", num_shards=1)
  monkeypatch.undo()
  summary, recs = run("snli_ve", raw, out, "train", num_shards=1)
  assert (summary["shards_resumed"], summary["shards_written"]) == (0, 1)
  assert sorted(r["hypothesis"] for r in recs) == [b"changed 0", b"changed 1", b"changed 2"]
  assert not [f for f in os.listdir(out / "snli_ve/train") if f.startswith(".")]
  # A corrupt state file is no state: a warning, and the shard is written again.
  state = out / "snli_ve/train/conversion_state/snli_ve-train.tfrecord-00000-of-00001.json"
  state.write_text("{not json")
  with caplog.at_level(logging.WARNING):
    summary, recs = run("snli_ve", raw, out, "train", num_shards=1)
  assert (summary["shards_resumed"], summary["shards_written"], len(recs)) == (0, 1, 3)
  assert "unreadable conversion state" in caplog.text


def test_one_item_that_raises_is_one_skip(tmp_path, monkeypatch):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=4)
  real = images.check_image

  def crash_on_image_2(data, where, *args, **kwargs):
    if where.endswith("/2.jpg"):
      raise KeyError("a bug that only item 2 meets")
    return real(data, where, *args, **kwargs)

  monkeypatch.setattr(images, "check_image", crash_on_image_2)
  summary, recs = run("snli_ve", raw, out, "train", max_skip_fraction=0.5)
  assert summary["skipped"] == {"unexpected_error": 1} and len(recs) == 3
  (line,) = skipped_lines(out, "snli_ve", "train")
  assert '"image": "2"' in line["where"] and "KeyError" in line["where"]


def test_a_different_explicit_plan_needs_overwrite(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=3)
  run("snli_ve", raw, out, "train", num_shards=2)
  with pytest.raises(ValueError, match="--overwrite"):
    run("snli_ve", raw, out, "train", num_shards=3)
  summary, recs = run("snli_ve", raw, out, "train", num_shards=3, overwrite=True)
  assert summary["shards_written"] == 3 and len(recs) == 3
  assert len(_shard_files(out)) == 3


def test_threads_match_in_memory(tmp_path):
  raw = tmp_path / "raw"
  _snli_raw(raw, n=6)
  _, recs_m = run("snli_ve", raw, tmp_path / "m", "train", num_shards=2)
  threads = ("--direct_running_mode=multi_threading", "--direct_num_workers=2")
  summary, recs_t = run("snli_ve", raw, tmp_path / "t", "train", num_shards=2,
                        pipeline_args=threads)
  assert summary["written"] == 6
  assert [r["hypothesis"] for r in recs_t] == [r["hypothesis"] for r in recs_m]


def test_skips_fail_the_split_and_are_all_recorded(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=40, images=37)
  with open(raw / "snli_ve_train.jsonl", "a") as f:
    f.write("{not json\n")
  summary, _ = run("snli_ve", raw, out, "train")
  assert summary["status"] == "failed" and summary["written"] == 37
  assert summary["skipped"] == {"missing_image": 3, "malformed_row": 1}
  assert summary["problems"] == [
      "skipped 9.8% of its items (more than --max_skip_fraction=0.01)"]
  top = summary["top_skips"][0]
  assert (top["reason"], top["count"]) == ("missing_image", 3)
  assert top["examples"][0].startswith(str(raw / "flickr30k-images/37.jpg"))
  lines = skipped_lines(out, "snli_ve", "train")
  assert len(lines) == 4
  assert {"reason": "malformed_row",
          "where": f"{raw / 'snli_ve_train.jsonl'}:41: not json"} in lines
  text = converters.format_summary(summary)
  assert "missing_image: 3, e.g. " in text and "skipped.jsonl" in text
  tolerant, _ = run("snli_ve", raw, out, "train", max_skip_fraction=0.2)
  assert tolerant["status"] == "ok" and tolerant["shards_resumed"] == 1


def test_bad_arguments_name_the_problem(tmp_path):
  conv = converters.get_converter("snli_ve", converters.ConvertOptions(raw_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="no split 'testA'"):
    converters.convert(conv, "testA", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="snli_ve_train.jsonl"):
    converters.convert(conv, "train", str(tmp_path), pipeline_args=IN_MEMORY)
  with pytest.raises(ValueError, match="unknown dataset 'coco'"):
    converters.get_converter("coco", converters.ConvertOptions(raw_dir="x"))
  with pytest.raises(ValueError, match="records_per_shard must be at least 1"):
    converters.convert(conv, "train", str(tmp_path), records_per_shard=0)
  with pytest.raises(ValueError, match="num_frames must be at least 1"):
    converters.ConvertOptions(raw_dir="x", num_frames=0)
  # A file that cannot be parsed at all fails the split with one message naming it.
  write(str(tmp_path / "val_balanced_questions.json"), "{not json")
  with pytest.raises(ValueError, match=r"gqa/val: unreadable input: .*"
                     r"val_balanced_questions.json: not valid json"):
    run("gqa", tmp_path, tmp_path / "out", "val")


def _cli(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "tools/convert.py"), *args],
                        capture_output=True, text=True, timeout=300)


def test_cli_exits_non_zero_on_an_empty_split_and_on_bad_input(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=2)
  write(str(raw / "snli_ve_dev.jsonl"),
        json.dumps({"Flickr30K_ID": "9", "sentence2": "h", "gold_label": "neutral"}) + "\n")
  # Beam's own options pass through (--job_name is a Google Cloud option).
  result = _cli("snli_ve", f"--raw_dir={raw}", f"--out_dir={out}", "--split=train,val",
                "--direct_running_mode=in_memory", "--job_name=convert-test")
  assert result.returncode == 1, result.stderr[-2000:]
  assert "snli_ve/train: wrote 2 records" in result.stdout
  assert "snli_ve/val: wrote 0 records" in result.stdout
  assert "missing_image: 1, e.g. " in result.stdout
  errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1 and "snli_ve/val wrote 0 records" in errors[0]
  assert "flickr30k-images/9.jpg" in errors[0]
  assert json.loads((out / "snli_ve/val/conversion_summary.json").read_text())[
      "status"] == "failed"
  typo = _cli("snli_ve", f"--raw_dir={raw}", f"--out_dir={out}", "--max_skip_fractoin=1")
  assert typo.returncode == 2 and "error: unknown flags ['--max_skip_fractoin=1']" in (
      typo.stderr)
  missing = _cli("snli_ve", f"--raw_dir={tmp_path / 'nowhere'}", f"--out_dir={out}")
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1].startswith(
      "error: snli_ve train: none of ['snli_ve_train.jsonl'] found")
