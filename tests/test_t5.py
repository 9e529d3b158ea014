"""Tests for the T5 v1.1 text path (dynpt/models/t5.py) against hand-written numpy."""
import dataclasses
import math

import flax.linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.models import t5
from dynpt.models.configs import T5Config

ONE_LAYER = T5Config(vocab_size=16, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=12,
                     num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                     relative_attention_num_buckets=8, relative_attention_max_distance=12)


def _bucket_reference(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
  """T5's bucket function written per element with Python floats."""
  bucket = 0
  n = -rel
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      bucket += num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return bucket + n
  large = max_exact + int(math.log(n / max_exact + 1e-6) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize('bidirectional', [True, False])
def test_relative_position_bucket_matches_reference(bidirectional):
  rel = np.arange(-300, 301)
  got = np.asarray(t5.relative_position_bucket(rel, bidirectional, 32, 128))
  want = [_bucket_reference(int(r), bidirectional, 32, 128) for r in rel]
  np.testing.assert_array_equal(got, want)
  assert got.min() == 0 and got.max() == 31
  if not bidirectional:  # every future key shares bucket 0
    assert np.all(got[rel >= 0] == 0)


@settings(max_examples=25, deadline=None)
@given(rel=st.lists(st.integers(-2000, 2000), min_size=40, max_size=40),
       bidirectional=st.booleans(),
       num_buckets=st.sampled_from([8, 16, 32, 64]),
       max_distance=st.sampled_from([20, 64, 128, 500]))
def test_relative_position_bucket_property(rel, bidirectional, num_buckets, max_distance):
  got = np.asarray(t5.relative_position_bucket(np.array(rel), bidirectional, num_buckets,
                                               max_distance))
  want = [_bucket_reference(r, bidirectional, num_buckets, max_distance) for r in rel]
  np.testing.assert_array_equal(got, want)


def test_rms_norm_matches_numpy():
  x = np.random.RandomState(0).normal(size=(2, 3, 6)).astype(np.float32) * 3
  norm = t5.RMSNorm()
  variables = norm.init(jax.random.key(0), x)
  scale = np.linspace(0.5, 2, 6).astype(np.float32)
  variables = {'params': {'scale': scale}}
  got = norm.apply(variables, x)
  want = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert t5.RMSNorm(dtype=jnp.bfloat16).apply(variables, x).dtype == jnp.bfloat16


def test_query_init_is_scaled_down_by_sqrt_head_dim():
  attention = t5.MultiHeadAttention(num_heads=4, head_dim=64)
  x = jnp.zeros((1, 2, 256))
  params = nn.meta.unbox(attention.init(jax.random.key(0), x, x)['params'])
  ratio = np.std(params['key']['kernel']) / np.std(params['query']['kernel'])
  assert params['query']['kernel'].shape == (256, 256)  # [embed, joined_kv]
  assert abs(ratio - 8.0) < 0.5


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _rms(x, scale):
  return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-6) * scale


def _attention(p, xq, xkv, mask, bias, cfg):
  def heads(x):
    return x.reshape(x.shape[:2] + (cfg.num_heads, cfg.head_dim))
  q, k, v = (heads(a @ p[n]['kernel']) for a, n in ((xq, 'query'), (xkv, 'key'), (xkv, 'value')))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) + bias
  logits = np.where(mask, logits, -1e10)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum('bhqk,bkhd->bqhd', w, v).reshape(xq.shape[:2] + (-1,))
  return out @ p['out']['kernel']


def _mlp(p, x):
  return (_gelu_tanh(x @ p['wi_0']['kernel']) * (x @ p['wi_1']['kernel'])) @ p['wo']['kernel']


def _relpos_numpy(table, q_len, k_len, bidirectional, cfg):
  buckets = np.array([[_bucket_reference(k - q, bidirectional,
                                         cfg.relative_attention_num_buckets,
                                         cfg.relative_attention_max_distance)
                       for k in range(k_len)] for q in range(q_len)])
  return table[:, buckets][None]  # [1, heads, q, k]


def _t5_numpy(p, enc_tokens, dec_tokens, cfg):
  """A one-layer T5 v1.1 forward pass written directly from the paper's description."""
  emb = p['token_embedder']['embedding']
  e, d = p['encoder'], p['decoder']
  x = emb[enc_tokens]
  enc_mask = (enc_tokens > 0)[:, None, None, :]
  bias = _relpos_numpy(e['relpos_bias']['rel_embedding'], x.shape[1], x.shape[1], True, cfg)
  layer = e['layers_0']
  x = x + _attention(layer['attention'], _rms(x, layer['pre_attention_layer_norm']['scale']),
                     _rms(x, layer['pre_attention_layer_norm']['scale']), enc_mask, bias, cfg)
  x = x + _mlp(layer['mlp'], _rms(x, layer['pre_mlp_layer_norm']['scale']))
  encoded = _rms(x, e['encoder_norm']['scale'])

  y = emb[dec_tokens]
  length = y.shape[1]
  causal = np.tril(np.ones((length, length), bool))[None, None]
  bias = _relpos_numpy(d['relpos_bias']['rel_embedding'], length, length, False, cfg)
  layer = d['layers_0']
  h = _rms(y, layer['pre_self_attention_layer_norm']['scale'])
  y = y + _attention(layer['self_attention'], h, h, causal, bias, cfg)
  h = _rms(y, layer['pre_cross_attention_layer_norm']['scale'])
  y = y + _attention(layer['encoder_decoder_attention'], h, encoded, enc_mask, 0.0, cfg)
  y = y + _mlp(layer['mlp'], _rms(y, layer['pre_mlp_layer_norm']['scale']))
  return _rms(y, d['decoder_norm']['scale']) @ d['logits_dense']['kernel']


def _random_params(model, *args, seed=0, scale=0.5):
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(np.float32), shapes)


def test_one_layer_forward_matches_numpy():
  enc = np.array([[3, 4, 5, 6, 0, 0], [7, 2, 9, 0, 0, 0]], np.int32)
  dec = np.array([[0, 5, 6, 7, 1], [0, 8, 1, 0, 0]], np.int32)
  model = t5.T5Transformer(ONE_LAYER)
  variables = _random_params(model, enc, dec)
  got = jax.jit(model.apply)(variables, enc, dec)
  want = _t5_numpy(variables['params'], enc, dec, ONE_LAYER)
  assert got.dtype == jnp.float32 and got.shape == (2, 5, 16)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_extra_encoder_padding_changes_nothing():
  enc = np.array([[3, 4, 5, 6, 0, 0], [7, 2, 9, 0, 0, 0]], np.int32)
  dec = np.array([[0, 5, 6, 7, 1], [0, 8, 1, 0, 0]], np.int32)
  model = t5.T5Transformer(ONE_LAYER)
  variables = _random_params(model, enc, dec)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(variables, np.pad(enc, ((0, 0), (0, 5))), dec),
                             apply(variables, enc, dec), atol=1e-5)


def test_param_tree_uses_t5x_names_and_logical_axes():
  cfg = T5Config(vocab_size=20, emb_dim=8, num_heads=2, head_dim=3, mlp_dim=10,
                 num_encoder_layers=2, num_decoder_layers=3)
  tokens = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(t5.T5Transformer(cfg).init, jax.random.key(0), tokens, tokens)
  params = nn.meta.unbox(boxed['params'])
  flat = {'/'.join(p.key for p in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  expected = {
      'token_embedder/embedding': (20, 8),
      'encoder/layers_0/attention/query/kernel': (8, 6),
      'encoder/layers_1/attention/out/kernel': (6, 8),
      'encoder/layers_0/mlp/wi_0/kernel': (8, 10),
      'encoder/layers_0/mlp/wi_1/kernel': (8, 10),
      'encoder/layers_0/mlp/wo/kernel': (10, 8),
      'encoder/layers_0/pre_attention_layer_norm/scale': (8,),
      'encoder/layers_0/pre_mlp_layer_norm/scale': (8,),
      'encoder/relpos_bias/rel_embedding': (2, 32),
      'encoder/encoder_norm/scale': (8,),
      'decoder/layers_2/self_attention/key/kernel': (8, 6),
      'decoder/layers_0/encoder_decoder_attention/value/kernel': (8, 6),
      'decoder/layers_0/pre_self_attention_layer_norm/scale': (8,),
      'decoder/layers_0/pre_cross_attention_layer_norm/scale': (8,),
      'decoder/relpos_bias/rel_embedding': (2, 32),
      'decoder/decoder_norm/scale': (8,),
      'decoder/logits_dense/kernel': (8, 20),
  }
  for path, shape in expected.items():
    assert flat.get(path) == shape, path
  assert 'layers_2' not in params['encoder'] and 'layers_3' not in params['decoder']
  specs = nn.get_partition_spec(boxed)['params']
  assert tuple(specs['token_embedder']['embedding']) == ('vocab', 'embed')
  assert tuple(specs['encoder']['layers_0']['attention']['query']['kernel']) == (
      'embed', 'joined_kv')
  assert tuple(specs['decoder']['layers_0']['mlp']['wo']['kernel']) == ('mlp', 'embed')
  assert tuple(specs['decoder']['relpos_bias']['rel_embedding']) == ('heads', 'relpos_buckets')
  assert tuple(specs['decoder']['logits_dense']['kernel']) == ('embed', 'vocab')


def test_remat_gives_same_gradients():
  enc = np.array([[3, 4, 5, 0]], np.int32)
  dec = np.array([[0, 5, 6]], np.int32)
  remat = dataclasses.replace(ONE_LAYER, remat=True)
  params = _random_params(t5.T5Transformer(ONE_LAYER), enc, dec)['params']

  def grads(config):
    def loss(p):
      return jnp.sum(jnp.square(t5.T5Transformer(config).apply({'params': p}, enc, dec)))
    traced = jax.jit(jax.grad(loss)).trace(params)
    assert ('remat' in str(traced.jaxpr)) == config.remat
    return traced.lower().compile()(params)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               grads(ONE_LAYER), grads(remat))
