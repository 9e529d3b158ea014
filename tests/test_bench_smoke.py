"""Checks of the analytic FLOP counts the benchmarks divide by (dynpt/flops.py)."""

import jax
import jax.numpy as jnp
import pytest

from dynpt import flops
from dynpt.models import configs, resnet, t5


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def test_resnet_flops_match_xla_cost_analysis():
  cfg = configs.get_config("tiny", image_size=32).resnet
  model = resnet.ResNet(cfg)
  images = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  counted, grid, channels = flops.resnet_flops(cfg, 32)
  assert (grid, channels) == (2, resnet.output_channels(cfg))
  xla = _xla_flops(lambda p, x: model.apply(p, x), params, images) / 2
  # XLA also counts norms, ReLUs and weight standardisation; convs dominate.
  assert counted <= xla <= 1.3 * counted


def test_t5_flops_match_xla_cost_analysis():
  cfg = configs.get_config("tiny", vocab_size=128).t5
  model = t5.T5Transformer(cfg)
  tokens = jnp.ones((2, 16), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)
  encoder, decoder, logits = flops.t5_flops(cfg, 16, 16, num_visual_tokens=0)
  xla = _xla_flops(lambda p, a, b: model.apply(p, a, b), params, tokens, tokens) / 2
  counted = encoder + decoder + logits
  assert counted <= xla <= 1.5 * counted  # Softmax, norms, GELU are extra at this width.


def test_count_flops_known_values_and_scaling():
  small = configs.get_config("small", vocab_size=32128, image_size=224)
  count = flops.count_flops(small)
  # Logits: 2 * 32 tokens * 512 * 32128; stage-3 map 14x14x1024 projected to 512.
  assert count.logits == 2 * 32 * 512 * 32128
  assert count.visual_projection == 2 * 196 * 1024 * 512
  assert count.train == 3 * count.forward
  assert 8e9 < count.forward < 1e10  # ~8.9 GFLOP (ResNet-26 trunk + T5 v1.1 small).
  two = flops.count_flops(small, num_frames=2)
  assert two.resnet == 2 * count.resnet
  assert two.decoder > count.decoder  # Cross-attention over twice the visual tokens.


def test_count_flops_rejects_bad_lengths():
  with pytest.raises(ValueError, match="target_length=0"):
    flops.count_flops(configs.get_config("tiny"), target_length=0)
