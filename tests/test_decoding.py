"""Tests for cached greedy decoding and beam search (dynpt/models/decoding.py)."""
import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.models import configs, decoding
from dynpt.models.vl_model import VLModel

# A 4-token vocabulary (pad 0, EOS 1, 2, 3) keeps exhaustive search over all outputs cheap.
_TINY = configs.get_config('tiny', vocab_size=4, image_size=16)
CFG = dataclasses.replace(
    _TINY, t5=dataclasses.replace(_TINY.t5, num_encoder_layers=1),
    resnet=dataclasses.replace(_TINY.resnet, depth=18))
LENGTH = 4
ENC = np.array([[2, 3, 2, 0], [3, 3, 0, 0], [2, 0, 0, 0], [3, 2, 3, 2]], np.int32)


@pytest.fixture(scope='module')
def setup():
  model = VLModel(CFG)
  image = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), image, ENC,
                                        np.zeros((4, LENGTH), np.int32)))
  rng = np.random.RandomState(4)
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32),
                        shapes)['params']
  encoded, mask = jax.jit(functools.partial(model.apply, method=VLModel.encode))(
      {'params': params}, image, ENC)
  decode = jax.jit(functools.partial(model.apply, method=VLModel.decode))
  return model, params, image, encoded, mask, decode


def _uncached_greedy(params, encoded, mask, decode):
  """Step-by-step argmax over a full (uncached) decoder pass per step."""
  batch = encoded.shape[0]
  out = np.zeros((batch, LENGTH), np.int32)
  done = np.zeros(batch, bool)
  for step in range(LENGTH):
    inputs = np.zeros((batch, LENGTH), np.int32)  # [0, out_0, ..., out_{step-1}, 0...]
    inputs[:, 1:step + 1] = out[:, :step]
    logits = decode({'params': params}, encoded, mask, inputs)
    token = np.where(done, 0, np.argmax(np.asarray(logits[:, step]), axis=-1))
    out[:, step] = token
    done |= token == decoding.EOS_ID
  return out


def _check_eos_layout(tokens):
  for row in np.asarray(tokens):
    eos = np.flatnonzero(row == decoding.EOS_ID)
    if eos.size:
      assert np.all(row[eos[0] + 1:] == 0), row


def test_cached_greedy_matches_uncached_argmax(setup):
  model, params, image, encoded, mask, decode = setup
  got = np.asarray(decoding.greedy_decode(model, params, image, ENC, LENGTH))
  want = _uncached_greedy(params, encoded, mask, decode)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32 and got.shape == (4, LENGTH)
  _check_eos_layout(got)
  # The fixture's seed gives rows that stop early and rows that run to the end.
  ends = [row.tolist().index(1) if 1 in row else LENGTH for row in got]
  assert min(ends) < LENGTH - 1 and max(ends) == LENGTH, got
  boxed = decoding.greedy_decode(model, {'params': params}, image, ENC, LENGTH)
  np.testing.assert_array_equal(boxed, got)


def test_beam_size_one_is_greedy(setup):
  model, params, image, *_ = setup
  greedy = decoding.greedy_decode(model, params, image, ENC, LENGTH)
  beam = decoding.beam_search(model, params, image, ENC, LENGTH, beam_size=1)
  np.testing.assert_array_equal(beam, greedy)


def _best_by_exhaustive_search(params, encoded, mask, decode, alpha):
  """Scores every output of length <= LENGTH (ending at EOS or at LENGTH) exactly."""
  sequences = np.array(list(itertools.product(range(CFG.t5.vocab_size), repeat=LENGTH)),
                       np.int32)  # [S, L]
  num = len(sequences)
  inputs = np.pad(sequences[:, :-1], ((0, 0), (1, 0)))  # shifted right, starts with 0
  best = []
  for row in range(encoded.shape[0]):
    logits = decode({'params': params}, jnp.repeat(encoded[row:row + 1], num, axis=0),
                    jnp.repeat(mask[row:row + 1], num, axis=0), inputs)
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    token_logp = np.take_along_axis(logp, sequences[..., None], axis=-1)[..., 0]  # [S, L]
    scores = {}
    for seq, lp in zip(sequences, token_logp):
      eos = np.flatnonzero(seq == decoding.EOS_ID)
      length = eos[0] + 1 if eos.size else LENGTH
      hyp = tuple(seq[:length]) + (0,) * (LENGTH - length)
      scores[hyp] = lp[:length].sum() / ((5.0 + length) / 6.0) ** alpha
    best.append(max(scores, key=scores.get))
  return np.array(best, np.int32)


def test_wide_beam_finds_the_exhaustive_optimum(setup):
  model, params, image, encoded, mask, decode = setup
  # 40 beams hold every live prefix (<= 3^3) and every EOS candidate (<= 36) here.
  got = decoding.beam_search(model, params, image, ENC, LENGTH, beam_size=40, alpha=0.6)
  want = _best_by_exhaustive_search(params, encoded, mask, decode, alpha=0.6)
  np.testing.assert_array_equal(got, want)
  _check_eos_layout(got)
  # Here the search matters: greedy misses the optimum on some row.
  greedy = decoding.greedy_decode(model, params, image, ENC, LENGTH)
  assert np.any(np.asarray(greedy) != want)


@pytest.mark.parametrize('kwargs,match', [
    (dict(max_decode_length=0), 'max_decode_length'),
    (dict(max_decode_length=3, beam_size=0), 'beam_size'),
    (dict(max_decode_length=3, alpha=-1.0), 'alpha'),
])
def test_bad_arguments_raise(setup, kwargs, match):
  model, params, image, *_ = setup
  with pytest.raises(ValueError, match=match):
    decoding.beam_search(model, params, image, ENC, **kwargs)


def test_pad_batch_and_output_ids():
  batch = {'tokens': np.array([[5, 6, 1, 0], [7, 1, 8, 0]], np.int32),
           'image': np.ones((2, 3, 3, 3), np.uint8)}
  padded = decoding.pad_batch(batch, 4)
  assert padded['tokens'].shape == (4, 4) and padded['image'].shape == (4, 3, 3, 3)
  assert padded['tokens'].dtype == np.int32 and not padded['tokens'][2:].any()
  np.testing.assert_array_equal(padded['tokens'][:2], batch['tokens'])
  with pytest.raises(ValueError, match="'tokens' has 2 rows"):
    decoding.pad_batch(batch, 1)
  assert decoding.output_ids([5, 0, 6, 1, 7]) == [5, 6]
  assert decoding.output_ids([1, 5]) == []
  assert decoding.output_ids([5, 600, 6, 0], max_id=512) == [5, 6]


def test_make_batch_decoder_rejects_unknown_mode():
  with pytest.raises(ValueError, match='greedy'):
    decoding.make_batch_decoder(None, mode='sample', max_decode_length=4)
