"""Tests for the fused vision-language model (dynpt/models/vl_model.py) and its configs."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.models import configs
from dynpt.models.vl_model import VLModel, normalize_image, num_visual_tokens

CFG = configs.get_config('tiny', vocab_size=32)  # 32 px images -> 2x2 = 4 visual tokens
ENC = np.array([[5, 6, 7, 8, 0, 0], [9, 3, 0, 0, 0, 0]], np.int32)
DEC = np.array([[0, 4, 5, 6, 7], [0, 2, 3, 0, 0]], np.int32)


def _images(seed, shape=(2, 32, 32, 3)):
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, shape), jnp.float32)


def _random_params(model, *args, seed=0, scale=0.5):
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(np.float32), shapes)


@pytest.fixture(scope='module')
def setup():
  """Model, random params, an image batch, and a jitted teacher-forced forward pass.

  The forward pass is built from the jitted `encode` and `decode` methods so that the
  tests share two compilations.
  """
  model = VLModel(CFG)
  image = _images(0)
  variables = _random_params(model, image, ENC, DEC)
  encode = jax.jit(functools.partial(model.apply, method=VLModel.encode))
  decode = jax.jit(functools.partial(model.apply, method=VLModel.decode))

  def forward(v, images, enc, dec):
    return decode(v, *encode(v, images, enc), dec)

  return model, variables, image, forward, encode, decode


def test_shapes_for_images_and_video():
  model = VLModel(CFG)
  image = jnp.zeros((2, 32, 32, 3))
  video = jnp.zeros((2, 3, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), image, ENC, DEC)
  variables = nn.meta.unbox(variables)
  logits = jax.eval_shape(model.apply, variables, image, ENC, DEC)
  assert logits.shape == (2, 5, 32) and logits.dtype == jnp.float32
  for images, frames in ((image, 1), (video, 3)):
    encoded, mask = jax.eval_shape(
        lambda v, i: model.apply(v, i, ENC, method=VLModel.encode), variables, images)
    n = ENC.shape[1] + num_visual_tokens(CFG, frames)
    assert encoded.shape == (2, n, 32) and mask.shape == (2, n) and mask.dtype == jnp.bool_
    assert jax.eval_shape(model.apply, variables, images, ENC, DEC).shape == (2, 5, 32)
  assert num_visual_tokens(CFG, 3) == 12
  assert num_visual_tokens(configs.get_config('base')) == 196
  assert num_visual_tokens(configs.get_config('base'), 8) == 8 * 196


def test_param_names_axes_and_no_batch_stats():
  model = VLModel(CFG)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         ENC[:1], DEC[:1])
  assert set(boxed) == {'params'}
  params = nn.meta.unbox(boxed['params'])
  assert set(params) == {
      'token_embedder', 'encoder', 'decoder', 'resnet', 'visual_projection',
      'visual_row_embedding', 'visual_col_embedding', 'visual_temporal_embedding',
      'visual_norm'}
  flat = {'/'.join(p.key for p in path)
          for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  for path in ('token_embedder/embedding', 'encoder/layers_1/attention/query/kernel',
               'encoder/layers_0/mlp/wi_0/kernel', 'encoder/layers_0/mlp/wi_1/kernel',
               'encoder/layers_0/mlp/wo/kernel', 'encoder/relpos_bias/rel_embedding',
               'encoder/layers_0/pre_attention_layer_norm/scale',
               'encoder/layers_0/pre_mlp_layer_norm/scale', 'encoder/encoder_norm/scale',
               'decoder/layers_1/self_attention/out/kernel',
               'decoder/layers_0/encoder_decoder_attention/key/kernel',
               'decoder/layers_0/pre_self_attention_layer_norm/scale',
               'decoder/layers_0/pre_cross_attention_layer_norm/scale',
               'decoder/logits_dense/kernel', 'decoder/decoder_norm/scale',
               'resnet/conv_root/kernel', 'resnet/gn_root/scale',
               'resnet/block1/unit1/conv1/kernel', 'resnet/block3/unit2/gn3/scale',
               'visual_projection/kernel'):
    assert path in flat, path
  specs = nn.get_partition_spec(boxed)['params']
  assert tuple(specs['visual_projection']['kernel']) == ('conv_out', 'embed')
  assert tuple(specs['resnet']['conv_root']['kernel']) == (
      'conv_height', 'conv_width', 'conv_in', 'conv_out')


def test_padded_encoder_positions_are_masked(setup):
  _, variables, image, forward, encode, decode = setup
  logits = forward(variables, image, ENC, DEC)
  encoded, mask = encode(variables, image, ENC)
  np.testing.assert_array_equal(mask[:, :6], ENC > 0)
  assert bool(jnp.all(mask[:, 6:]))  # visual tokens are always valid
  # Whatever sits at masked encoder positions is never attended to.
  garbage = jnp.where(mask[..., None], encoded, 1e3)
  np.testing.assert_allclose(decode(variables, garbage, mask, DEC), logits, atol=1e-5)
  # ... while the unmasked positions matter.
  shifted = encoded.at[:, 0].add(1.0)
  assert float(jnp.max(jnp.abs(decode(variables, shifted, mask, DEC) - logits))) > 1e-3


def test_decoder_is_causal_and_image_matters(setup):
  _, variables, image, apply, _, _ = setup
  logits = apply(variables, image, ENC, DEC)
  changed = DEC.copy()
  changed[:, 3:] = [[11, 12], [13, 14]]
  new = apply(variables, image, ENC, changed)
  np.testing.assert_allclose(new[:, :3], logits[:, :3], atol=1e-5)
  assert float(jnp.max(jnp.abs(new[:, 3:] - logits[:, 3:]))) > 1e-3
  other_image = apply(variables, _images(5), ENC, DEC)
  assert float(jnp.max(jnp.abs(other_image - logits))) > 1e-3
  np.testing.assert_array_equal(apply(variables, image, ENC, DEC), logits)  # deterministic


def test_dropout_is_keyed_by_rng(setup):
  model, variables, image, apply, _, _ = setup

  @jax.jit
  def train_apply(key):
    return model.apply(variables, image, ENC, DEC, enable_dropout=True,
                       rngs={'dropout': key})

  a, b = train_apply(jax.random.key(1)), train_apply(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - train_apply(jax.random.key(2))))) > 1e-3
  assert float(jnp.max(jnp.abs(a - apply(variables, image, ENC, DEC)))) > 1e-3


def test_video_frames_and_temporal_embedding(setup):
  _, variables, image, _, encode, _ = setup
  image_tokens = encode(variables, image, ENC)[0][:, 6:]
  other = _images(7)
  forward = encode(variables, jnp.stack([image, other], axis=1), ENC)[0][:, 6:]  # [B, 8, D]
  backward = encode(variables, jnp.stack([other, image], axis=1), ENC)[0][:, 6:]
  # An image is a one-frame video; frames are encoded independently, in order.
  np.testing.assert_allclose(forward[:, :4], image_tokens, atol=1e-5)
  # The same frame at another index differs only by its temporal embedding.
  assert float(jnp.max(jnp.abs(backward[:, 4:] - image_tokens))) > 1e-3


def test_bfloat16_matches_float32_and_remat_keeps_params(setup):
  _, variables, image, apply, _, _ = setup
  bf16 = VLModel(configs.get_config('tiny', vocab_size=32, dtype='bfloat16'))
  logits = apply(variables, image, ENC, DEC)
  logits_bf16 = jax.jit(bf16.apply)(variables, image, ENC, DEC)
  assert logits_bf16.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(logits)))
  error = jnp.abs(logits_bf16 - logits)
  assert float(jnp.max(error)) < 0.1 * scale and float(jnp.mean(error)) < 0.02 * scale
  remat = VLModel(configs.get_config('tiny', vocab_size=32, remat=True))
  remat_params = jax.eval_shape(remat.init, jax.random.key(0), image, ENC, DEC)
  assert jax.tree.structure(nn.meta.unbox(remat_params)) == jax.tree.structure(variables)
  def loss(p):
    return jnp.sum(remat.apply(p, image, ENC, DEC))
  assert str(jax.make_jaxpr(jax.grad(loss))(variables)).count('remat') >= (
      CFG.t5.num_encoder_layers + CFG.t5.num_decoder_layers)


@pytest.mark.parametrize('image,match', [
    (jnp.zeros((2, 64, 64, 3)), 'image_size'),
    (jnp.zeros((2, 9, 32, 32, 3)), 'max_frames'),
    (jnp.zeros((2, 32, 32)), 'image must be'),
])
def test_bad_images_raise(image, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(VLModel(CFG).init, jax.random.key(0), image, ENC, DEC)


def test_normalize_image():
  pixels = np.array([[[[0, 127, 255]]]], np.uint8)
  out = normalize_image(pixels)
  assert isinstance(out, np.ndarray) and out.dtype == np.float32
  np.testing.assert_allclose(out, [[[[-1.0, 127 / 127.5 - 1, 1.0]]]], atol=1e-6)
  assert isinstance(normalize_image(jnp.asarray(pixels)), jax.Array)


def test_get_config():
  base = configs.get_config('base')
  assert (base.t5.emb_dim, base.t5.num_heads, base.t5.head_dim, base.t5.mlp_dim) == (
      768, 12, 64, 2048)
  assert base.t5.num_encoder_layers == base.t5.num_decoder_layers == 12
  assert base.t5.vocab_size == 32128 and base.resnet.depth == 50 and base.image_size == 224
  custom = configs.get_config('small', vocab_size=100, image_size=64, dtype='bfloat16',
                              remat=True, dropout_rate=0.0)
  assert custom.t5.vocab_size == 100 and custom.image_size == 64
  assert custom.t5.dtype == custom.resnet.dtype == 'bfloat16'
  assert custom.t5.remat and custom.resnet.remat and custom.t5.dropout_rate == 0.0
  hash(custom)  # frozen: usable as a static jit argument
  with pytest.raises(ValueError, match='huge'):
    configs.get_config('huge')
  with pytest.raises(ValueError, match='float16'):
    configs.get_config('tiny', dtype='float16')
  with pytest.raises(ValueError, match='max_frames'):
    num_visual_tokens(CFG, CFG.max_frames + 1)


def test_early_fusion_runs_the_visual_tokens_through_the_text_encoder(setup):
  """Same params, same encoded shape; the text encodings now depend on the image."""
  _, variables, image, forward, encode, _ = setup
  early = VLModel(configs.get_config('tiny', vocab_size=32, visual_fusion='encoder'))
  enc_early = jax.jit(functools.partial(early.apply, method=VLModel.encode))
  fwd_early = jax.jit(early.apply)
  # The parameter tree (names and shapes) is the late-fusion model's.
  shapes = nn.meta.unbox(jax.eval_shape(early.init, jax.random.key(0), image, ENC, DEC))
  assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, variables)
  late_encoded, late_mask = encode(variables, image, ENC)
  encoded, mask = enc_early(variables, image, ENC)
  assert encoded.shape == late_encoded.shape
  np.testing.assert_array_equal(mask, late_mask)
  # Late fusion: text encodings ignore the image. Early fusion: they read it.
  other = _images(7)
  np.testing.assert_array_equal(encode(variables, other, ENC)[0][:, :6], late_encoded[:, :6])
  moved = enc_early(variables, other, ENC)[0]
  assert float(jnp.max(jnp.abs(moved[:, :4] - encoded[:, :4]))) > 1e-3
  # Padded text positions stay invisible to the visual tokens and the decoder.
  padded = ENC.copy()
  padded[1, 2:] = 0
  garbage = ENC.copy()
  garbage[1, 2:] = 17  # not pad: visible
  base = fwd_early(variables, image, padded, DEC)
  assert float(jnp.max(jnp.abs(fwd_early(variables, image, garbage, DEC)[1] - base[1]))) > 1e-3
  widened = np.concatenate([padded, np.zeros((2, 3), np.int32)], axis=1)
  np.testing.assert_allclose(fwd_early(variables, image, widened, DEC), base, atol=1e-5)
  assert float(jnp.max(jnp.abs(base - forward(variables, image, ENC, DEC)))) > 1e-3
  with pytest.raises(ValueError, match='visual_fusion'):
    configs.get_config('tiny', visual_fusion='middle')
