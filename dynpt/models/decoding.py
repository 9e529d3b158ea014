"""Batched autoregressive decoding (greedy and beam search) for `VLModel`.

Both run as one jitted program per (model, shapes, max length): the encoder runs once,
the decoder runs one token per step with a key/value cache (the flax 'cache'
collection, allocated by a `decode=True` call on zeros), and a `lax.while_loop` stops
early once every row is finished. Ids: decoding starts from 0 (T5's BOS = pad), EOS is
1, and positions after a row's EOS are 0.
"""
import contextlib
import functools
from typing import Any, Callable, ContextManager

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dynpt.models.vl_model import VLModel, normalize_image

Array = jax.Array
EOS_ID = 1
PAD_ID = 0
# Log-probability of impossible hypotheses. Finite so that sums stay ordered (no NaNs).
_NEG_INF = -1.0e9
_CACHE_BATCH_VARS = ('cached_key', 'cached_value')


def _variables(params: Any) -> dict:
  """Accepts either the `{'params': ...}` variables dict or the param tree itself."""
  params = nn.meta.unbox(params)
  return dict(params) if 'params' in params else {'params': params}


def _encode_and_init_cache(model: VLModel, variables: dict, image: Array, tokens: Array,
                           max_decode_length: int, repeat: int = 1):
  """Encodes once, repeats rows `repeat` times (beams), and allocates the decoder cache."""
  encoded, mask = model.apply(variables, image, tokens, method=VLModel.encode)
  encoded = jnp.repeat(encoded, repeat, axis=0)  # row b * repeat + k
  mask = jnp.repeat(mask, repeat, axis=0)
  # Only the cache's shapes/initial values are used; XLA drops the unused forward pass.
  _, mutated = model.apply(variables, encoded, mask,
                           jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32),
                           decode=True, mutable=['cache'], method=VLModel.decode)
  return encoded, mask, mutated['cache']


def _step_logits(model: VLModel, variables: dict, cache: Any, encoded: Array, mask: Array,
                 tokens: Array) -> tuple[Array, Any]:
  """One cached decoder step: tokens [N] -> float32 logits [N, vocab], new cache."""
  logits, mutated = model.apply({**variables, 'cache': cache}, encoded, mask, tokens[:, None],
                                decode=True, mutable=['cache'], method=VLModel.decode)
  return logits[:, 0].astype(jnp.float32), mutated['cache']


def _check_args(image: Array, encoder_input_tokens: Array, max_decode_length: int) -> None:
  if max_decode_length < 1:
    raise ValueError(f'max_decode_length must be >= 1, got {max_decode_length}')
  if encoder_input_tokens.ndim != 2:
    raise ValueError('encoder_input_tokens must be [batch, length], got shape '
                     f'{encoder_input_tokens.shape}')
  if image.shape[0] != encoder_input_tokens.shape[0]:
    raise ValueError(f'image batch {image.shape[0]} != encoder_input_tokens batch '
                     f'{encoder_input_tokens.shape[0]}')


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_length'))
def _greedy(model, variables, image, tokens, max_decode_length):
  encoded, mask, cache = _encode_and_init_cache(model, variables, image, tokens,
                                                max_decode_length)
  batch = tokens.shape[0]

  def cond(state):
    step, _, _, done, _ = state
    return (step < max_decode_length) & ~jnp.all(done)

  def body(state):
    step, cache, prev, done, out = state
    logits, cache = _step_logits(model, variables, cache, encoded, mask, prev)
    token = jnp.where(done, PAD_ID, jnp.argmax(logits, axis=-1).astype(jnp.int32))
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
    return step + 1, cache, token, done | (token == EOS_ID), out

  state = (jnp.array(0, jnp.int32), cache, jnp.full((batch,), PAD_ID, jnp.int32),
           jnp.zeros((batch,), bool), jnp.zeros((batch, max_decode_length), jnp.int32))
  return jax.lax.while_loop(cond, body, state)[-1]


def greedy_decode(model: VLModel, params: Any, image: Array, encoder_input_tokens: Array,
                  max_decode_length: int) -> Array:
  """Greedy (argmax) decoding with a key/value cache.

  Args:
    model: the `VLModel` (hashable; a static argument of the jitted program).
    params: the param tree, or the `{'params': ...}` variables dict (boxed is fine).
    image: float images [B, H, W, 3] or videos [B, F, H, W, 3] (see `normalize_image`).
    encoder_input_tokens: int [B, L_txt], pad 0.
    max_decode_length: number of output positions.

  Returns:
    int32 [B, max_decode_length]; each row ends at its first EOS (1), zeros after.
  """
  _check_args(image, encoder_input_tokens, max_decode_length)
  return _greedy(model, _variables(params), jnp.asarray(image),
                 jnp.asarray(encoder_input_tokens, jnp.int32), max_decode_length)


def brevity_penalty(alpha: float, length) -> Array:
  """GNMT / t5x length normalisation: ((5 + length) / 6) ** alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x: Array, indices: Array) -> Array:
  """x [B, K', ...], indices [B, K] -> x[b, indices[b, k], ...]."""
  return jax.vmap(lambda row, idx: row[idx])(x, indices)


def _reorder_cache(cache: Any, flat_indices: Array) -> Any:
  """Reorders the per-row cache entries (keys, values); counters are shared by rows."""
  def reorder(path, leaf):
    name = getattr(path[-1], 'key', None)
    return leaf[flat_indices] if name in _CACHE_BATCH_VARS else leaf
  return jax.tree_util.tree_map_with_path(reorder, cache)


@functools.partial(jax.jit,
                   static_argnames=('model', 'max_decode_length', 'beam_size', 'alpha'))
def _beam(model, variables, image, tokens, max_decode_length, beam_size, alpha):
  batch, k, length = tokens.shape[0], beam_size, max_decode_length
  encoded, mask, cache = _encode_and_init_cache(model, variables, image, tokens, length,
                                                repeat=k)
  positions = jnp.arange(length)
  max_penalty = brevity_penalty(alpha, length)

  def row_done(state):
    _, _, live_logp, _, fin_scores, num_finished, _ = state
    # Log-probs only fall and the penalty only grows (alpha >= 0), so no live beam can
    # end above live_logp / penalty(max length): stop when the best finished beats it.
    cannot_improve = fin_scores[:, 0] >= live_logp[:, 0] / max_penalty
    return (num_finished >= k) | cannot_improve

  def cond(state):
    return (state[0] < length) & ~jnp.all(row_done(state))

  def body(state):
    step, live_seqs, live_logp, fin_seqs, fin_scores, num_finished, cache = state
    active = ~row_done(state)  # [B]
    prev = jnp.where(step == 0, PAD_ID,
                     live_seqs[:, :, jnp.maximum(step - 1, 0)]).reshape(batch * k)
    logits, cache = _step_logits(model, variables, cache, encoded, mask, prev)
    logp = jax.nn.log_softmax(logits).reshape(batch, k, -1)  # [B, K, V]
    vocab = logp.shape[-1]
    cand_logp, cand_idx = jax.lax.top_k((live_logp[:, :, None] + logp).reshape(batch, -1),
                                        2 * k)  # [B, 2K], best first
    cand_beam, cand_token = cand_idx // vocab, cand_idx % vocab
    cand_seqs = _gather_beams(live_seqs, cand_beam)  # [B, 2K, L]
    cand_seqs = jnp.where(positions == step, cand_token[:, :, None], cand_seqs)
    is_eos = cand_token == EOS_ID
    valid = cand_logp > _NEG_INF / 2  # descends from a real (not padding) beam

    # Finish EOS candidates ranked within the top K (as fairseq does; so beam_size=1 is
    # greedy), and at the last step every top-K candidate.
    in_top_k = jnp.arange(2 * k) < k
    finishing = (is_eos | (step == length - 1)) & in_top_k & valid & active[:, None]
    new_scores = jnp.where(finishing, cand_logp / brevity_penalty(alpha, step + 1), _NEG_INF)
    fin_scores, order = jax.lax.top_k(jnp.concatenate([fin_scores, new_scores], axis=1), k)
    fin_seqs = _gather_beams(jnp.concatenate([fin_seqs, cand_seqs], axis=1), order)
    num_finished = num_finished + jnp.sum(finishing, axis=1)

    # The K best candidates that did not emit EOS stay alive (at most K of 2K are EOS).
    live_logp, order = jax.lax.top_k(jnp.where(is_eos, _NEG_INF, cand_logp), k)
    live_seqs = _gather_beams(cand_seqs, order)
    source_rows = jnp.arange(batch)[:, None] * k + _gather_beams(cand_beam, order)
    cache = _reorder_cache(cache, source_rows.reshape(-1))
    return step + 1, live_seqs, live_logp, fin_seqs, fin_scores, num_finished, cache

  live_logp = jnp.tile(jnp.array([0.0] + [_NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  state = (jnp.array(0, jnp.int32), jnp.zeros((batch, k, length), jnp.int32), live_logp,
           jnp.zeros((batch, k, length), jnp.int32), jnp.full((batch, k), _NEG_INF),
           jnp.zeros((batch,), jnp.int32), cache)
  _, _, _, fin_seqs, _, _, _ = jax.lax.while_loop(cond, body, state)
  return fin_seqs[:, 0]


def beam_search(model: VLModel, params: Any, image: Array, encoder_input_tokens: Array,
                max_decode_length: int, beam_size: int = 4, alpha: float = 0.6) -> Array:
  """Beam search returning the best hypothesis under length-normalised log-probability.

  A hypothesis ends at EOS (or at max_decode_length) and is scored by
  log p / ((5 + length) / 6) ** alpha. An EOS candidate is finished only when it ranks in
  the top `beam_size` of the step's candidates (so beam_size=1 reproduces greedy
  decoding); a row stops when it has `beam_size` finished hypotheses or none of its live
  ones can still beat its best finished one.

  Args:
    model: the `VLModel`.
    params: the param tree, or the `{'params': ...}` variables dict (boxed is fine).
    image: float images [B, H, W, 3] or videos [B, F, H, W, 3].
    encoder_input_tokens: int [B, L_txt], pad 0.
    max_decode_length: number of output positions.
    beam_size: hypotheses kept per row.
    alpha: length normalisation exponent (>= 0; 0 = raw log-probability).

  Returns:
    int32 [B, max_decode_length]; the best hypothesis per row, zeros after its EOS.
  """
  _check_args(image, encoder_input_tokens, max_decode_length)
  if beam_size < 1:
    raise ValueError(f'beam_size must be >= 1, got {beam_size}')
  if alpha < 0:
    raise ValueError(f'alpha must be >= 0 (the early stop relies on it), got {alpha}')
  return _beam(model, _variables(params), jnp.asarray(image),
               jnp.asarray(encoder_input_tokens, jnp.int32), max_decode_length, beam_size,
               float(alpha))


# --- Batched decoding of uint8 inputs: shared by downstream eval and captioning. ---

DECODE_MODES = ('greedy', 'beam')


def make_batch_decoder(model: VLModel, *, mode: str = 'greedy', max_decode_length: int,
                       beam_size: int = 4, alpha: float = 0.6,
                       trace_context: Callable[[], ContextManager] | None = None):
  """One jitted `(params, uint8 image, tokens) -> int32 [B, max_decode_length]` function.

  Images are normalised inside the program (`normalize_image`), so callers
  feed the pipeline's uint8 batches as they come. Call it with a fixed batch size
  (see `pad_batch`) so every call reuses one compilation.

  `trace_context` (e.g. `dynpt.train.partitioning.trace_context(mesh, mode)`) is
  entered while the program is traced, so the model's logical activation
  constraints shard the decoding batch as they shard the train step's.

  Raises:
    ValueError: for a `mode` other than 'greedy' or 'beam'.
  """
  if mode == 'greedy':
    fn = functools.partial(greedy_decode, model, max_decode_length=max_decode_length)
  elif mode == 'beam':
    fn = functools.partial(beam_search, model, max_decode_length=max_decode_length,
                           beam_size=beam_size, alpha=alpha)
  else:
    raise ValueError(f'decode mode {mode!r}; choose from {DECODE_MODES}')
  context = trace_context or contextlib.nullcontext

  def decode(params, image, tokens):
    with context():
      return fn(params, normalize_image(image), tokens)

  return jax.jit(decode)


def pad_batch(arrays: dict, size: int) -> dict:
  """Zero-pads every array's leading axis to `size` rows (a fixed decode batch).

  Raises:
    ValueError: when an array already has more than `size` rows.
  """
  out = {}
  for key, value in arrays.items():
    value = np.asarray(value)
    if len(value) > size:
      raise ValueError(f'{key!r} has {len(value)} rows; the decode batch is {size}')
    out[key] = np.concatenate([value, np.zeros((size - len(value),) + value.shape[1:],
                                               value.dtype)])
  return out


def output_ids(tokens, max_id: int | None = None) -> list[int]:
  """The ids of one decoded (or target) row before its first EOS, padding dropped.

  Args:
    tokens: one row of ids.
    max_id: when set, ids >= max_id are dropped too (e.g. the sentinels and the
      padded logits past a sentencepiece model, which no caption contains).
  """
  ids = []
  for t in np.asarray(tokens).tolist():
    if t == EOS_ID:
      break
    if t != PAD_ID and (max_id is None or t < max_id):
      ids.append(t)
  return ids
