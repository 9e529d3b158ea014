"""Every shipped finetune and pretrain gin config parses and binds what it promises."""
import glob
import inspect
import os

import gin
import pytest

from dynpt import main as dynpt_main
from dynpt import mixing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FILES = sorted(os.path.relpath(p, os.path.join(REPO, "gin_configs"))
                for kind in ("finetune", "pretrain")
                for p in glob.glob(os.path.join(REPO, "gin_configs", kind, "*.gin")))


@pytest.mark.parametrize("gin_file", _FILES)
def test_config_parses(gin_file):
  # sampler_doremi.gin also requires the reference run; other files refuse the macro.
  bindings = ["RUN_DIR='/tmp/dynpt-gin-check'"]
  if gin_file == "pretrain/sampler_doremi.gin":
    bindings.append("DOREMI_REFERENCE_RUN='/tmp/dynpt-gin-reference'")
  dynpt_main.parse_gin([gin_file], bindings)
  try:
    assert gin.query_parameter("%RUN_DIR") == "/tmp/dynpt-gin-check"
    if gin_file.startswith("finetune/"):
      task = gin.query_parameter("%MIXTURE")
      assert task in os.path.basename(gin_file)
      if task in ("msrvtt_qa", "msvd_qa") and not gin_file.startswith("finetune/toy_"):
        assert gin.query_parameter("%ANSWER_VOCAB_SIZE") == 1000
    sampler = os.path.basename(gin_file)[len("sampler_"):-len(".gin")]
    if gin_file.startswith("pretrain/sampler_"):
      # The file names the sampler, and its options plus what a run hands over build it.
      cfg = gin.query_parameter("loop.train.sampler_cfg").scoped_configurable_fn()
      assert cfg.name == sampler
      if sampler == "doremi":  # Needs the reference run on disk; check the wiring.
        assert cfg.options["reference_run_dir"] == "/tmp/dynpt-gin-reference"
        assert set(cfg.options) <= set(inspect.signature(mixing.DoReMiSampler).parameters)
      else:
        tasks = [f"task{i}" for i in range(24)]
        run = mixing.RunFacts(task_sizes=lambda: [10 ** 5] * 24,
                              num_steps=gin.query_parameter("%NUM_STEPS"))
        built = mixing.make_sampler(cfg.name, tasks, gin.query_parameter("%BATCH_SIZE"),
                                    run=run, **cfg.options)
        assert built.name == sampler
  finally:
    gin.clear_config()


def test_config_written_before_the_downstream_package_still_parses(tmp_path):
  """A run's config.gin from before the move imports dynpt.train.finetune/evaluate."""
  old = tmp_path / "config.gin"
  old.write_text(
      "from __gin__ import dynamic_registration\n"
      "import dynpt.train.config as config\n"
      "import dynpt.train.evaluate as evaluate\n"
      "import dynpt.train.finetune as finetune\n"
      "import dynpt.train.loop as loop\n"
      "finetune.EvalConfig.batch_size = 3\n"
      "finetune.pretrain_init_params.init_from = None\n"
      "evaluate.evaluate.examples_per_task = 5\n"
      "loop.train.init_params = @finetune.pretrain_init_params()\n")
  dynpt_main.parse_gin([str(old)], [])
  try:
    from dynpt.downstream import decode_score, teacher_forced

    assert gin.get_configurable(decode_score.EvalConfig)().batch_size == 3
    assert gin.query_parameter("evaluate.evaluate.examples_per_task") == 5
    assert teacher_forced.evaluate.__module__ == "dynpt.downstream.teacher_forced"
  finally:
    gin.clear_config()
