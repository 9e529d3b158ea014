"""The vision-language model: ResNet image tokens fused with the T5 text encoder outputs.

    image [B, (F,) H, W, 3] --ResNet (per frame)--> [B*F, g, g, C] --visual_projection-->
        + row / column / temporal embeddings --visual_norm--> visual tokens [B, F*g*g, D]
    text tokens [B, L] --T5 encoder--> [B, L, D]
    encoded = [text encodings; visual tokens]  -> T5 decoder (cross-attends to both)

The visual tokens skip the text encoder (as in the paper: "we concatenate the 196
vision features with the text features ... after the encoder layers"). Padded text
positions (id 0) are masked everywhere; visual tokens are always valid. Under
`VLConfig.visual_fusion='encoder'` they instead join the text encoder's input (early
fusion), with the same params and the same encoded shape.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dynpt.models import cpu_kernels
from dynpt.models.configs import VLConfig
from dynpt.models.resnet import ResNet
from dynpt.models.t5 import Decoder, Encoder, RMSNorm, make_token_embedder

Array = jax.Array

# The ResNet stem and stages 2-3 each halve the resolution (with 'SAME'-style padding,
# so odd sizes round up): output stride 16.
_NUM_DOWNSAMPLES = 4
_POS_INIT = nn.initializers.normal(stddev=0.02)


def normalize_image(images_uint8):
  """Maps uint8 pixels [0, 255] to float32 [-1, 1] (pixel / 127.5 - 1).

  The model expects this normalisation; it keeps numpy inputs numpy (for host-side
  data pipelines) and jax inputs jax.

  Args:
    images_uint8: uint8 (or integer-valued) array [..., H, W, 3].

  Returns:
    float32 array of the same shape.
  """
  xp = jnp if isinstance(images_uint8, jax.Array) else np
  return xp.asarray(images_uint8, xp.float32) / 127.5 - 1.0


def visual_grid_size(image_size: int) -> int:
  """Side of the stage-3 ResNet feature map for a square image (14 at 224 px)."""
  size = image_size
  for _ in range(_NUM_DOWNSAMPLES):
    size = -(-size // 2)
  return size


def num_visual_tokens(config: VLConfig, num_frames: int = 1) -> int:
  """Visual tokens appended to the text encodings (196 per frame at 224 px)."""
  if num_frames < 1 or num_frames > config.max_frames:
    raise ValueError(f'num_frames={num_frames} is outside [1, max_frames={config.max_frames}]')
  return num_frames * visual_grid_size(config.image_size) ** 2


class VLModel(nn.Module):
  """ResNet image encoder + T5 v1.1 encoder-decoder (see the module docstring).

  Params: T5X's names at the top level (`token_embedder`, `encoder`, `decoder`) plus
  `resnet`, `visual_projection`, `visual_{row,col,temporal}_embedding` and `visual_norm`.
  """
  config: VLConfig

  def setup(self):
    t5 = self.config.t5
    dtype = jnp.dtype(t5.dtype)
    grid = visual_grid_size(self.config.image_size)
    self.token_embedder = make_token_embedder(t5)
    self.encoder = Encoder(t5, shared_embedding=self.token_embedder)
    self.decoder = Decoder(t5, shared_embedding=self.token_embedder)
    self.resnet = ResNet(self.config.resnet)
    self.visual_projection = nn.Dense(
        t5.emb_dim, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 ('conv_out', 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
        dot_general=cpu_kernels.dense_dot_general(t5.cpu_kernels))
    # Small tables: their first axis is left unnamed (replicated).
    self.visual_row_embedding = self.param(
        'visual_row_embedding', nn.with_logical_partitioning(_POS_INIT, (None, 'embed')),
        (grid, t5.emb_dim), jnp.float32)
    self.visual_col_embedding = self.param(
        'visual_col_embedding', nn.with_logical_partitioning(_POS_INIT, (None, 'embed')),
        (grid, t5.emb_dim), jnp.float32)
    self.visual_temporal_embedding = self.param(
        'visual_temporal_embedding', nn.with_logical_partitioning(_POS_INIT, (None, 'embed')),
        (self.config.max_frames, t5.emb_dim), jnp.float32)
    self.visual_norm = RMSNorm(dtype=dtype)
    self.visual_dropout = nn.Dropout(rate=t5.dropout_rate, broadcast_dims=(-2,))

  def encode_image(self, image: Array, enable_dropout: bool = False) -> Array:
    """Images [B, H, W, 3] or videos [B, F, H, W, 3] -> visual tokens [B, F*g*g, D].

    An image is a one-frame video: both get the temporal embedding of their frame index.
    """
    cfg = self.config
    if image.ndim == 4:
      image = image[:, None]
    if image.ndim != 5 or image.shape[-1] != 3:
      raise ValueError('image must be [batch, H, W, 3] or [batch, frames, H, W, 3], got '
                       f'shape {image.shape}')
    batch, frames, height, width, _ = image.shape
    if (height, width) != (cfg.image_size, cfg.image_size):
      raise ValueError(f'image is {height}x{width} but VLConfig.image_size is '
                       f'{cfg.image_size} (the visual position table is sized for it)')
    if frames > cfg.max_frames:
      raise ValueError(f'video has {frames} frames but VLConfig.max_frames is '
                       f'{cfg.max_frames}')
    dtype = jnp.dtype(cfg.t5.dtype)
    fmap = self.resnet(image.reshape((batch * frames, height, width, 3)))  # [B*F, g, g, C]
    grid = fmap.shape[1]
    x = self.visual_projection(fmap)  # [B*F, g, g, D]
    x = (x + jnp.asarray(self.visual_row_embedding, dtype)[None, :, None, :]
         + jnp.asarray(self.visual_col_embedding, dtype)[None, None, :, :])
    x = x.reshape((batch, frames, grid * grid, -1))  # [B, F, g*g, D]
    x = x + jnp.asarray(self.visual_temporal_embedding[:frames], dtype)[None, :, None, :]
    x = x.reshape((batch, frames * grid * grid, -1))  # [B, N_vis, D]
    x = self.visual_norm(x)
    x = self.visual_dropout(x, deterministic=not enable_dropout)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  def encode(self, image: Array, encoder_input_tokens: Array,
             enable_dropout: bool = False) -> tuple[Array, Array]:
    """Returns encoded [B, L_txt + N_vis, D] and its mask [B, L_txt + N_vis] (bool)."""
    early = self.config.visual_fusion == 'encoder'
    # Under early fusion the encoder's input dropout covers the visual tokens too.
    visual = self.encode_image(image, enable_dropout and not early)  # [B, N_vis, D]
    if visual.shape[0] != encoder_input_tokens.shape[0]:
      raise ValueError(f'image batch {visual.shape[0]} != encoder_input_tokens batch '
                       f'{encoder_input_tokens.shape[0]}')
    mask = jnp.concatenate(
        [encoder_input_tokens > 0, jnp.ones(visual.shape[:2], dtype=bool)], axis=1)
    if early:
      encoded = self.encoder(encoder_input_tokens, deterministic=not enable_dropout,
                             appended=visual)  # [B, L + N_vis, D]
      return encoded, mask
    text = self.encoder(encoder_input_tokens, deterministic=not enable_dropout)  # [B, L, D]
    encoded = jnp.concatenate([text, visual.astype(text.dtype)], axis=1)
    return encoded, mask

  def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
             enable_dropout: bool = False, decode: bool = False) -> Array:
    """Returns float32 logits [B, L_tgt, vocab].

    With `decode=True` this uses the 'cache' collection: call once on zeros
    [B, max_decode_length] with mutable=['cache'] to allocate it, then once per token
    with [B, 1] inputs.
    """
    return self.decoder(encoded, encoder_mask, decoder_input_tokens,
                        deterministic=not enable_dropout, decode=decode)

  def __call__(self, image: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               enable_dropout: bool = False) -> Array:
    """Teacher-forced forward pass: logits [B, L_tgt, vocab] (float32)."""
    encoded, encoder_mask = self.encode(image, encoder_input_tokens, enable_dropout)
    return self.decode(encoded, encoder_mask, decoder_input_tokens, enable_dropout)
