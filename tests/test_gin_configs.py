"""Every shipped finetune and pretrain gin config parses and binds what it promises."""
import glob
import os

import gin
import pytest

from dynpt import main as dynpt_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FILES = sorted(os.path.relpath(p, os.path.join(REPO, "gin_configs"))
                for kind in ("finetune", "pretrain")
                for p in glob.glob(os.path.join(REPO, "gin_configs", kind, "*.gin")))


@pytest.mark.parametrize("gin_file", _FILES)
def test_config_parses(gin_file):
  dynpt_main.parse_gin([gin_file], ["RUN_DIR='/tmp/dynpt-gin-check'"])
  try:
    assert gin.query_parameter("%RUN_DIR") == "/tmp/dynpt-gin-check"
    if gin_file.startswith("finetune/"):
      task = gin.query_parameter("%MIXTURE")
      assert task in os.path.basename(gin_file)
      if task in ("msrvtt_qa", "msvd_qa") and not gin_file.startswith("finetune/toy_"):
        assert gin.query_parameter("%ANSWER_VOCAB_SIZE") == 1000
  finally:
    gin.clear_config()
