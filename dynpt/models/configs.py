"""Model configurations: dataclasses and the named sizes (tiny, small, base, large).

The dataclasses are frozen so a config is hashable and can be a static argument of
`jax.jit` (the decoding functions rely on that). Sizes follow T5 v1.1 (t5x's
`t5_1_1/{small,base,large}.gin`) for the text side; the image side grows with them
(ResNet-26, ResNet-50 as in the paper, ResNet-101).
"""
import dataclasses

# T5's SentencePiece vocabulary has 32,000 pieces plus 100 sentinel ids; t5x pads the
# embedding table to 32128 so it divides evenly over model-parallel shards.
T5_VOCAB_SIZE = 32128
_DTYPES = ('float32', 'bfloat16')
# Where the visual tokens join the text: `VLConfig.visual_fusion`.
VISUAL_FUSIONS = ('decoder', 'encoder')


@dataclasses.dataclass(frozen=True)
class T5Config:
  """T5 v1.1 encoder-decoder sizes.

  Attributes:
    vocab_size: rows of the shared token embedding and columns of the logits layer.
    emb_dim: model width (d_model).
    num_heads: attention heads.
    head_dim: width of one head; num_heads * head_dim need not equal emb_dim.
    mlp_dim: hidden width of the gated-GELU MLP.
    num_encoder_layers: text encoder depth.
    num_decoder_layers: decoder depth.
    dropout_rate: dropout used everywhere T5 uses it (embeddings, attention weights,
      residual branches, MLP hidden layer, final norm).
    relative_attention_num_buckets: relative position buckets per stack.
    relative_attention_max_distance: distance beyond which positions share a bucket.
    dtype: compute dtype ('float32' or 'bfloat16'); params are always float32.
    remat: rematerialise each layer in the backward pass (saves activation memory).
    cpu_kernels: dense layers contract through `dynpt.models.cpu_kernels.matmul` (for
      XLA:CPU) instead of `nn.Dense`'s own `lax.dot_general`; same params and function.
      Set from `ModelConfig.cpu_kernels` by whoever builds the model for a mesh.
  """
  vocab_size: int
  emb_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_encoder_layers: int
  num_decoder_layers: int
  dropout_rate: float = 0.1
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dtype: str = 'float32'
  remat: bool = False
  cpu_kernels: bool = False

  def __post_init__(self):
    _check_dtype(self.dtype, 'T5Config')


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """ResNet image encoder (stages 1-3 only; output stride 16).

  Attributes:
    depth: 18 (basic blocks), 26, 50 or 101 (bottleneck blocks).
    width: multiplier on the 64 base channels (e.g. 0.125 for tests).
    num_groups: GroupNorm groups; must divide every channel count of the net.
    dtype: compute dtype ('float32' or 'bfloat16'); params are always float32.
    remat: rematerialise each residual unit in the backward pass.
    preactivation: BiT's pre-activation ResNet v2 trunk (what the published BiT-M
      checkpoints are: no root norm, each unit normalises its input, BiT's epsilons)
      instead of the default post-norm v1.5 one; bottleneck depths only.
    cpu_kernels: convolutions through `dynpt.models.cpu_kernels` (1x1 as `matmul`,
      wider ones with the im2col kernel gradient, for XLA:CPU) instead of XLA's plain
      convolution; same params and function.
  """
  depth: int = 50
  width: float = 1.0
  num_groups: int = 32
  dtype: str = 'float32'
  remat: bool = False
  preactivation: bool = False
  cpu_kernels: bool = False

  def __post_init__(self):
    _check_dtype(self.dtype, 'ResNetConfig')


@dataclasses.dataclass(frozen=True)
class VLConfig:
  """The vision-language model: ResNet image encoder + T5 text encoder and decoder.

  Attributes:
    t5: text encoder / decoder config.
    resnet: image encoder config.
    image_size: input height and width in pixels; fixes the visual position table.
    max_frames: rows of the learned temporal embedding (video inputs).
    visual_fusion: where the visual tokens meet the text. 'decoder' (the paper's):
      they skip the text encoder and the decoder cross-attends to [text encodings;
      visual tokens]. 'encoder': they join the text encoder's input, so its
      self-attention relates question words to image regions in every layer (early
      fusion); the decoder then cross-attends to the encodings of both. Same params,
      same shapes; docs/study/transfer.md measures why a miniature needs it.
  """
  t5: T5Config
  resnet: ResNetConfig
  image_size: int = 224
  max_frames: int = 8
  visual_fusion: str = 'decoder'

  def __post_init__(self):
    if self.visual_fusion not in VISUAL_FUSIONS:
      raise ValueError(f'visual_fusion must be one of {VISUAL_FUSIONS}, got '
                       f'{self.visual_fusion!r}')


def _check_dtype(dtype: str, where: str) -> None:
  if dtype not in _DTYPES:
    raise ValueError(f'{where}.dtype must be one of {_DTYPES}, got {dtype!r}')


# name -> (T5Config kwargs, ResNetConfig kwargs, image_size)
_SIZES = {
    'tiny': (dict(emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                  num_encoder_layers=2, num_decoder_layers=2),
             dict(depth=26, width=0.125, num_groups=4), 32),
    'small': (dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
                   num_encoder_layers=8, num_decoder_layers=8),
              dict(depth=26, width=1.0, num_groups=32), 224),
    'base': (dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048,
                  num_encoder_layers=12, num_decoder_layers=12),
             dict(depth=50, width=1.0, num_groups=32), 224),
    'large': (dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816,
                   num_encoder_layers=24, num_decoder_layers=24),
              dict(depth=101, width=1.0, num_groups=32), 224),
}
MODEL_NAMES = tuple(_SIZES)
# The T5 sizes a checkpoint may set beside a named size (`get_config(t5_overrides=...)`):
# imported T5 v1.1 checkpoints of any size, not only the named ones.
T5_SIZE_FIELDS = ('emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_encoder_layers',
                  'num_decoder_layers', 'relative_attention_num_buckets',
                  'relative_attention_max_distance')


def get_config(name: str, *, vocab_size: int | None = None, image_size: int | None = None,
               dtype: str | None = None, remat: bool | None = None,
               dropout_rate: float | None = None,
               t5_overrides: dict | None = None,
               resnet_preactivation: bool | None = None,
               cpu_kernels: bool = False,
               visual_fusion: str = 'decoder') -> VLConfig:
  """Returns the named model size with optional overrides.

  Args:
    name: one of 'tiny', 'small', 'base' (the paper's model), 'large'.
    vocab_size: overrides the T5 vocabulary size (default 32128).
    image_size: overrides the input image size (default 224; 32 for 'tiny').
    dtype: compute dtype for both towers ('float32' or 'bfloat16').
    remat: per-layer rematerialisation for both towers.
    dropout_rate: T5 dropout rate (default 0.1).
    t5_overrides: T5 sizes (keys of `T5_SIZE_FIELDS`) replacing the named size's, e.g.
      those of an imported checkpoint; the ResNet stays the named size's.
    resnet_preactivation: BiT's pre-activation ResNet v2 trunk (`ResNetConfig.
      preactivation`), e.g. for an import of the BiT-M release; default: the v1.5 trunk.
    cpu_kernels: both towers use the XLA:CPU kernels of `dynpt.models.cpu_kernels`
      (resolved from `ModelConfig.cpu_kernels` by `cpu_kernels.resolve`); default: plain
      flax layers, as on TPU and GPU. Params and function are the same either way.
    visual_fusion: `VLConfig.visual_fusion` ('decoder', the paper's, or 'encoder').

  Returns:
    A frozen `VLConfig`.

  Raises:
    ValueError: for an unknown name or an invalid override.
  """
  if name not in _SIZES:
    raise ValueError(f'Unknown model name {name!r}; expected one of {MODEL_NAMES}')
  t5_kw, resnet_kw, default_image_size = _SIZES[name]
  t5_kw = dict(t5_kw, vocab_size=T5_VOCAB_SIZE if vocab_size is None else vocab_size)
  resnet_kw = dict(resnet_kw)
  unknown = sorted(set(t5_overrides or {}) - set(T5_SIZE_FIELDS))
  if unknown:
    raise ValueError(f't5_overrides has unknown keys {unknown}; known: {T5_SIZE_FIELDS}')
  t5_kw.update({k: int(v) for k, v in (t5_overrides or {}).items()})
  if dropout_rate is not None:
    t5_kw['dropout_rate'] = dropout_rate
  for key, value in (('dtype', dtype), ('remat', remat), ('cpu_kernels', bool(cpu_kernels))):
    if value is not None:
      t5_kw[key] = value
      resnet_kw[key] = value
  if resnet_preactivation is not None:
    resnet_kw['preactivation'] = bool(resnet_preactivation)
  image_size = default_image_size if image_size is None else image_size
  if t5_kw['vocab_size'] < 2:
    raise ValueError(f'vocab_size must be >= 2 (pad 0, EOS 1), got {vocab_size}')
  if image_size < 1:
    raise ValueError(f'image_size must be positive, got {image_size}')
  return VLConfig(t5=T5Config(**t5_kw), resnet=ResNetConfig(**resnet_kw),
                  image_size=image_size, visual_fusion=visual_fusion)
