"""T5 v1.1 encoder-decoder in Flax linen, with T5X's parameter names.

T5 v1.1 differs from the original T5 by its gated-GELU MLP and untied logits layer.
As in T5:
  * layer norms are RMSNorms (scale only, no mean subtraction, no bias);
  * attention logits are not divided by sqrt(head_dim) -- the factor is folded into the
    query initializer (T5X notes this is equivalent under Adafactor);
  * each stack has one relative position bias table shared by all its layers
    (bidirectional buckets in the encoder, causal buckets in the decoder);
  * the token embedding is shared by encoder and decoder and sits at the top level.

Parameter paths follow t5x/examples/t5/network.py (`token_embedder/embedding`,
`encoder/layers_0/attention/query/kernel`, `decoder/logits_dense/kernel`, ...), and the
attention kernels are stored 2-D ([embed, heads * head_dim], the `joined_kv` layout), so
a T5X checkpoint maps onto these params by name. The modules here take only tokens, so
the text path can be run (and checked) on its own via `T5Transformer`.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dynpt.models import cpu_kernels as cpu_kernels_lib
from dynpt.models.configs import T5Config

Array = jax.Array

_ATTENTION_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
_DENSE_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
_RELPOS_INIT = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
# Additive logit for masked-out keys. Finite (not -inf) so that a query whose keys are
# all masked (an all-padding text row) gets uniform weights instead of NaNs.
_MASK_VALUE = -1e10


def _dense(features: int, axes: tuple[str, str], name: str, dtype: Any,
           init=_DENSE_INIT, dot_general: Callable = lax.dot_general) -> nn.Dense:
  """A bias-free dense layer with float32 params and logical axis names.

  `dot_general` is the model's contraction, chosen from `T5Config.cpu_kernels` where
  the layers are built: `nn.Dense`'s own, or the same product with gradients that
  XLA:CPU computes without transposing an operand first (`cpu_kernels.matmul`).
  """
  return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(init, axes), name=name,
                  dot_general=dot_general)


def relative_position_bucket(relative_position: Array, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> Array:
  """Maps relative positions (key - query) to T5's log-spaced buckets.

  Small distances get one bucket each; larger ones share logarithmically wider
  buckets up to `max_distance`, beyond which all distances share the last bucket.
  Bidirectional attention spends half the buckets on each direction; causal attention
  maps every future position (positive relative position) to bucket 0.

  Args:
    relative_position: int array of key_position - query_position.
    bidirectional: whether keys may lie after the query.
    num_buckets: total number of buckets.
    max_distance: distance at which the last bucket starts.

  Returns:
    int32 array of bucket ids in [0, num_buckets), same shape as the input.
  """
  relative_position = jnp.asarray(relative_position, jnp.int32)
  ret = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  # The epsilon keeps exact powers (n = max_exact * 2^k) from rounding down a bucket.
  log_ratio = jnp.log(n.astype(jnp.float32) / max_exact + jnp.finfo(jnp.float32).eps)
  val_if_large = max_exact + (
      log_ratio / jnp.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(n < max_exact, n, val_if_large)


class RMSNorm(nn.Module):
  """T5's layer norm: x / rms(x) * scale, computed in float32 (no mean, no bias)."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = jnp.asarray(x, jnp.float32)
    mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = jnp.asarray(x32 * jax.lax.rsqrt(mean_square + self.epsilon), self.dtype)
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (x.shape[-1],), jnp.float32)
    return y * jnp.asarray(scale, self.dtype)


class RelativePositionBias(nn.Module):
  """One [heads, buckets] table turning query/key positions into attention biases."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """Returns the bias [1, heads, q_len, k_len] for int positions [q_len], [k_len]."""
    relative = key_positions[None, :] - query_positions[:, None]  # [q_len, k_len]
    buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    table = self.param(
        'rel_embedding', nn.with_logical_partitioning(_RELPOS_INIT, ('heads', 'relpos_buckets')),
        (self.num_heads, self.num_buckets), jnp.float32)
    bias = jnp.take(table, buckets, axis=1)  # [heads, q_len, k_len]
    return jnp.asarray(bias[None], self.dtype)


class MultiHeadAttention(nn.Module):
  """T5 multi-head attention with an optional autoregressive key/value cache.

  With `decode=True` the first call (no 'cache' variables yet) allocates a cache as
  long as its input; later calls take one position at a time, write its key/value at
  the cache index and attend to positions <= that index.
  """
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  dot_general: Callable = lax.dot_general  # The model's (`T5Config.cpu_kernels`).

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None,
               bias: Array | None = None, *, deterministic: bool = True,
               decode: bool = False) -> Array:
    """Attends from `inputs_q` [B, Lq, D] to `inputs_kv` [B, Lk, D].

    Args:
      inputs_q: query inputs.
      inputs_kv: key/value inputs.
      mask: bool, broadcastable to [B, heads, Lq, Lk]; False = masked out.
      bias: additive float bias broadcastable to [B, heads, Lq, Lk].
      deterministic: disables dropout.
      decode: use / fill the autoregressive cache (self-attention only).

    Returns:
      [B, Lq, D] in `dtype`.
    """
    joined = self.num_heads * self.head_dim
    depth_scaling = jnp.sqrt(self.head_dim).astype(jnp.float32)

    def query_init(key, shape, dtype=jnp.float32):
      return _ATTENTION_INIT(key, shape, dtype) / depth_scaling

    def heads(x: Array) -> Array:  # [B, L, heads * kv] -> [B, L, heads, kv]
      x = x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
      return nn.with_logical_constraint(x, ('batch', 'length', 'heads', 'kv'))

    qkv_axes = ('embed', 'joined_kv')
    dense = functools.partial(_dense, dtype=self.dtype, dot_general=self.dot_general)
    query = heads(dense(joined, qkv_axes, 'query', init=query_init)(inputs_q))
    key = heads(dense(joined, qkv_axes, 'key', init=_ATTENTION_INIT)(inputs_kv))
    value = heads(dense(joined, qkv_axes, 'value', init=_ATTENTION_INIT)(inputs_kv))

    if decode:
      initialized = self.has_variable('cache', 'cached_key')
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape,
                                   value.dtype)
      cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
      if initialized:
        if query.shape[1] != 1:
          raise ValueError('Cached decoding takes one position per call, got query length '
                           f'{query.shape[1]}')
        index = cache_index.value
        key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
        value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
        cached_key.value = key
        cached_value.value = value
        cache_index.value = index + 1
        filled = (jnp.arange(key.shape[1]) <= index)[None, None, None, :]  # [1,1,1,Lmax]
        mask = filled if mask is None else jnp.logical_and(mask, filled)

    # No 1/sqrt(head_dim) here: it is folded into query_init (T5 convention).
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key,
                        preferred_element_type=jnp.float32)  # [B, heads, Lq, Lk]
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, _MASK_VALUE)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    # T5 drops whole attention columns, broadcast over the query axis.
    weights = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(
        weights, deterministic=deterministic)
    x = jnp.einsum('bhqk,bkhd->bqhd', weights, value)  # [B, Lq, heads, kv]
    x = x.reshape(x.shape[:2] + (joined,))
    return dense(inputs_q.shape[-1], ('joined_kv', 'embed'), 'out', init=_ATTENTION_INIT)(x)


class MlpBlock(nn.Module):
  """Gated-GELU feed-forward block: wo(gelu(wi_0 x) * wi_1 x)."""
  mlp_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  dot_general: Callable = lax.dot_general  # The model's (`T5Config.cpu_kernels`).

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    dense = functools.partial(_dense, dtype=self.dtype, dot_general=self.dot_general)
    gate = dense(self.mlp_dim, ('embed', 'mlp'), 'wi_0')(x)
    linear = dense(self.mlp_dim, ('embed', 'mlp'), 'wi_1')(x)
    h = nn.gelu(gate, approximate=True) * linear  # [B, L, mlp]
    h = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    return dense(x.shape[-1], ('mlp', 'embed'), 'wo')(h)


def _residual_dropout(config: T5Config, x: Array, deterministic: bool) -> Array:
  return nn.Dropout(rate=config.dropout_rate, broadcast_dims=(-2,))(
      x, deterministic=deterministic)


def _attention(config: T5Config, name: str) -> MultiHeadAttention:
  return MultiHeadAttention(num_heads=config.num_heads, head_dim=config.head_dim,
                            dtype=jnp.dtype(config.dtype), dropout_rate=config.dropout_rate,
                            name=name,
                            dot_general=cpu_kernels_lib.dense_dot_general(config.cpu_kernels))


def _mlp(config: T5Config) -> MlpBlock:
  return MlpBlock(mlp_dim=config.mlp_dim, dtype=jnp.dtype(config.dtype),
                  dropout_rate=config.dropout_rate, name='mlp',
                  dot_general=cpu_kernels_lib.dense_dot_general(config.cpu_kernels))


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block of the text encoder."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array, deterministic: bool) -> Array:
    dtype = jnp.dtype(self.config.dtype)
    y = RMSNorm(dtype=dtype, name='pre_attention_layer_norm')(x)
    y = _attention(self.config, 'attention')(y, y, mask, bias, deterministic=deterministic)
    x = x + _residual_dropout(self.config, y, deterministic)
    y = RMSNorm(dtype=dtype, name='pre_mlp_layer_norm')(x)
    y = _mlp(self.config)(y, deterministic)
    x = x + _residual_dropout(self.config, y, deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and MLP block of the decoder."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_mask: Array | None, cross_mask: Array,
               bias: Array, deterministic: bool, decode: bool) -> Array:
    dtype = jnp.dtype(self.config.dtype)
    y = RMSNorm(dtype=dtype, name='pre_self_attention_layer_norm')(x)
    y = _attention(self.config, 'self_attention')(
        y, y, self_mask, bias, deterministic=deterministic, decode=decode)
    x = x + _residual_dropout(self.config, y, deterministic)
    y = RMSNorm(dtype=dtype, name='pre_cross_attention_layer_norm')(x)
    y = _attention(self.config, 'encoder_decoder_attention')(
        y, encoded, cross_mask, deterministic=deterministic)
    x = x + _residual_dropout(self.config, y, deterministic)
    y = RMSNorm(dtype=dtype, name='pre_mlp_layer_norm')(x)
    y = _mlp(self.config)(y, deterministic)
    x = x + _residual_dropout(self.config, y, deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


def make_token_embedder(config: T5Config) -> nn.Embed:
  """The shared token embedding (T5X: normal(1.0) init, float32 params)."""
  return nn.Embed(
      num_embeddings=config.vocab_size, features=config.emb_dim,
      dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
      embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0),
                                                  ('vocab', 'embed')))


def _relpos(config: T5Config, bidirectional: bool) -> RelativePositionBias:
  return RelativePositionBias(
      num_buckets=config.relative_attention_num_buckets,
      max_distance=config.relative_attention_max_distance, num_heads=config.num_heads,
      bidirectional=bidirectional, dtype=jnp.dtype(config.dtype), name='relpos_bias')


class Encoder(nn.Module):
  """T5 text encoder: tokens [B, L] -> encodings [B, L, emb_dim]; pad id 0 is masked.

  `appended` embeddings [B, N, emb_dim] (the visual tokens under early fusion) join
  the token embeddings after the last (padded) text position, always valid; the
  output is then [B, L+N, D]. For the relative position bias they sit at positions
  0..N-1 and the text at N..N+L-1, so the padded text length never moves them.
  """
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool = True,
               appended: Array | None = None) -> Array:
    cfg = self.config
    if tokens.ndim != 2:
      raise ValueError(f'encoder_input_tokens must be [batch, length], got {tokens.shape}')
    valid = tokens > 0
    x = self.shared_embedding(tokens.astype(jnp.int32))  # [B, L, emb]
    if appended is not None:
      if appended.shape[0] != tokens.shape[0] or appended.shape[2] != x.shape[2]:
        raise ValueError(f'appended embeddings {appended.shape} do not fit tokens '
                         f'{tokens.shape} with emb_dim {x.shape[2]}')
      x = jnp.concatenate([x, appended.astype(x.dtype)], axis=1)
      valid = jnp.concatenate([valid, jnp.ones(appended.shape[:2], dtype=bool)], axis=1)
    mask = valid[:, None, None, :]  # [B, 1, 1, L]: padded keys are never attended to.
    positions = jnp.arange(tokens.shape[1])
    if appended is not None:  # Positions 0..N-1 for them, so that the text's padded
      # length does not move the image relative to the words.
      n = appended.shape[1]
      positions = jnp.concatenate([positions + n, jnp.arange(n)])
    bias = _relpos(cfg, bidirectional=True)(positions, positions)  # [1, heads, L, L]
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = _residual_dropout(cfg, x, deterministic).astype(jnp.dtype(cfg.dtype))
    layer_cls = nn.remat(EncoderLayer, static_argnums=(4,)) if cfg.remat else EncoderLayer
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, name=f'layers_{i}')(x, mask, bias, deterministic)
    x = RMSNorm(dtype=jnp.dtype(cfg.dtype), name='encoder_norm')(x)
    return _residual_dropout(cfg, x, deterministic)


class Decoder(nn.Module):
  """T5 decoder: shifted targets [B, L] + encodings -> float32 logits [B, L, vocab].

  In decode mode the first call allocates the caches (its length fixes the maximum
  decode length) and each later call consumes one token; the decoder keeps its own
  position counter to pick the relative position bias row for that token.
  """
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
               deterministic: bool = True, decode: bool = False) -> Array:
    cfg = self.config
    if decoder_input_tokens.ndim != 2:
      raise ValueError('decoder_input_tokens must be [batch, length], got '
                       f'{decoder_input_tokens.shape}')
    length = decoder_input_tokens.shape[1]
    stepping = decode and self.has_variable('cache', 'cache_index')
    if decode:
      index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
      key_positions = self.variable('cache', 'key_positions', jnp.arange, length)
    if stepping:
      if length != 1:
        raise ValueError(f'Cached decoding takes one token per call, got length {length}')
      query_positions = index.value[None]  # [1]
      all_positions = key_positions.value  # [max_decode_length]
      index.value = index.value + 1
      self_mask = None  # The attention cache masks positions not yet written.
    else:
      query_positions = all_positions = jnp.arange(length)
      self_mask = (query_positions[:, None] >= all_positions[None, :])[None, None]  # causal
    bias = _relpos(cfg, bidirectional=False)(query_positions, all_positions)
    cross_mask = encoder_mask[:, None, None, :].astype(bool)  # [B, 1, 1, L_enc]

    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))  # [B, L, emb]
    y = nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
    y = _residual_dropout(cfg, y, deterministic).astype(jnp.dtype(cfg.dtype))
    layer_cls = nn.remat(DecoderLayer, static_argnums=(6, 7)) if cfg.remat else DecoderLayer
    for i in range(cfg.num_decoder_layers):
      y = layer_cls(cfg, name=f'layers_{i}')(y, encoded, self_mask, cross_mask, bias,
                                              deterministic, decode)
    y = RMSNorm(dtype=jnp.dtype(cfg.dtype), name='decoder_norm')(y)
    y = _residual_dropout(cfg, y, deterministic)
    logits = _dense(cfg.vocab_size, ('embed', 'vocab'), 'logits_dense', jnp.float32,
                    dot_general=cpu_kernels_lib.dense_dot_general(cfg.cpu_kernels))(y)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class T5Transformer(nn.Module):
  """Text-only T5 v1.1 (tokens in, logits out), for checks against reference T5s."""
  config: T5Config

  def setup(self):
    self.token_embedder = make_token_embedder(self.config)
    self.encoder = Encoder(self.config, shared_embedding=self.token_embedder)
    self.decoder = Decoder(self.config, shared_embedding=self.token_embedder)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False) -> Array:
    """Returns encodings [B, L_enc, emb_dim]."""
    return self.encoder(encoder_input_tokens, deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
             enable_dropout: bool = False, decode: bool = False) -> Array:
    """Returns float32 logits [B, L_dec, vocab]; `encoder_mask` is [B, L_enc] bool."""
    return self.decoder(encoded, encoder_mask, decoder_input_tokens,
                        deterministic=not enable_dropout, decode=decode)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               enable_dropout: bool = False) -> Array:
    """Teacher-forced forward pass: float32 logits [B, L_dec, vocab]."""
    encoded = self.encode(encoder_input_tokens, enable_dropout)
    return self.decode(encoded, encoder_input_tokens > 0, decoder_input_tokens,
                       enable_dropout)
