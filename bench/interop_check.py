r"""Checks the Hugging Face interop at a real size and times it (docs/model.md).

  python bench/interop_check.py [--size=base] [--lengths=64,400]

Builds a random T5 v1.1 of the named size with transformers (untied head), saves it,
imports it (`dynpt.interop.importer`, a fresh ResNet), exports the text tower back
(`dynpt.interop.exporter`) and compares, in this one process: dynpt's logits with
Hugging Face's, and the re-loaded export's with the original's, each as the largest
difference over the largest magnitude. Needs the test extras (torch, transformers).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_SIZE = flags.DEFINE_enum("size", "base", ["small", "base", "large"], "T5 v1.1 size.")
_LENGTHS = flags.DEFINE_list("lengths", ["64", "400"], "Sequence lengths compared.")


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _relative(a, b) -> float:
  import numpy as np

  return float(np.abs(a - b).max() / np.abs(b).max())


def main(argv) -> None:
  del argv
  import torch
  from transformers import T5Config, T5ForConditionalGeneration

  from dynpt.models import configs

  ours_cfg = configs.get_config(_SIZE.value).t5
  cfg = T5Config(vocab_size=ours_cfg.vocab_size, d_model=ours_cfg.emb_dim,
                 d_kv=ours_cfg.head_dim, d_ff=ours_cfg.mlp_dim,
                 num_layers=ours_cfg.num_encoder_layers,
                 num_decoder_layers=ours_cfg.num_decoder_layers,
                 num_heads=ours_cfg.num_heads, feed_forward_proj="gated-gelu",
                 dropout_rate=0.0, tie_word_embeddings=False)
  torch.manual_seed(0)
  model = T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # transformers 5.x ties the head at construction: untie it.
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn(cfg.vocab_size, cfg.d_model) * 0.05)
  model.config.tie_word_embeddings = False
  with tempfile.TemporaryDirectory(prefix="interop_check_") as root:
    _check(model, root)


def _check(model, root: str) -> None:
  """Save, import, export, compare: see the module docstring."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from transformers import T5ForConditionalGeneration

  from dynpt.interop import exporter, hf, importer
  from dynpt.models import t5

  src, export_dir, hf_dir = (os.path.join(root, d) for d in ("hf_src", "export", "hf"))
  model.save_pretrained(src)
  print(f"CPU: {_cpu_name()}; size {_SIZE.value}")
  start = time.perf_counter()
  t5_cfg, tower = hf.read(src)
  print(f"hf.read: {time.perf_counter() - start:.1f} s")
  start = time.perf_counter()
  importer.import_checkpoint("hf", src, export_dir)
  print(f"import (fresh ResNet): {time.perf_counter() - start:.1f} s")
  start = time.perf_counter()
  exporter.export_text_tower("hf", export_dir, hf_dir)
  print(f"export to HF: {time.perf_counter() - start:.1f} s")
  reloaded = T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
  apply = jax.jit(t5.T5Transformer(t5_cfg).apply)
  rng = np.random.default_rng(0)
  for length in (int(x) for x in _LENGTHS.value):
    enc = rng.integers(2, 32000, (1, length))
    dec = rng.integers(2, 32000, (1, length))
    dec[:, 0] = 0
    ours = np.asarray(apply({"params": tower}, jnp.asarray(enc), jnp.asarray(dec)))
    with torch.no_grad():
      theirs = model(input_ids=torch.tensor(enc),
                     decoder_input_ids=torch.tensor(dec)).logits.numpy()
      back = reloaded(input_ids=torch.tensor(enc),
                      decoder_input_ids=torch.tensor(dec)).logits.numpy()
    print(f"length {length}: dynpt vs HF {_relative(ours, theirs):.2e}; "
          f"exported + from_pretrained vs HF {_relative(back, theirs):.2e}")


if __name__ == "__main__":
  app.run(main)
