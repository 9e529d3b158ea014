"""Analytic FLOP counts of the vision-language model, for utilisation (MFU) figures.

Model FLOPs utilisation compares the FLOPs the model *needs* with what the hardware
could do, so the count must not depend on how XLA happens to compile the step. We count
what the PaLM/Chinchilla convention counts:

* every multiply-add of a matmul or convolution is 2 FLOPs;
* norms, activations, softmax, the optimizer update, weight standardisation and
  embedding look-ups are left out (together well under 1% at the small size);
* a training step costs 3x the forward pass (the backward pass computes two matmuls,
  input and weight gradients, per forward one).

The ResNet side follows `dynpt.models.resnet` (stem, max-pool, stages 1-3, v1.5 strides
on the 3x3 conv, 1x1 projections where the shape changes); the text side follows
`dynpt.models.t5` (q/k/v/o projections, attention scores and values, gated-GELU MLP
with two input matrices, the untied logits layer). The decoder cross-attends to the 32
text encodings plus the visual tokens. `bench/train_step.py` checks these numbers
against XLA's own cost analysis of the compiled step.
"""

from __future__ import annotations

import dataclasses

from dynpt.models.configs import ResNetConfig, T5Config, VLConfig
from dynpt.models.resnet import STAGE_UNITS

# A train step = forward + backward, the backward costing twice the forward.
TRAIN_MULTIPLIER = 3


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Forward FLOPs of one example, by part of the model."""
  resnet: int
  visual_projection: int
  text_encoder: int
  decoder: int
  logits: int

  @property
  def forward(self) -> int:
    return (self.resnet + self.visual_projection + self.text_encoder + self.decoder
            + self.logits)

  @property
  def train(self) -> int:
    return TRAIN_MULTIPLIER * self.forward

  def as_dict(self) -> dict[str, int]:
    out = dataclasses.asdict(self)
    out.update(forward=self.forward, train=self.train)
    return out


def _conv_out(size: int, kernel: int, stride: int) -> int:
  """Output side of a conv padded by (kernel - 1) // 2 on each side (as resnet.StdConv)."""
  pad = (kernel - 1) // 2
  return (size + 2 * pad - kernel) // stride + 1


def _conv_flops(out_size: int, kernel: int, cin: int, cout: int) -> int:
  return 2 * out_size * out_size * kernel * kernel * cin * cout


def resnet_flops(config: ResNetConfig, image_size: int) -> tuple[int, int, int]:
  """Forward FLOPs of the ResNet trunk on one square image.

  Returns:
    (flops, side of the output feature map, output channels).

  Raises:
    ValueError: naming the depth when it is not a known ResNet depth.
  """
  if config.depth not in STAGE_UNITS:
    raise ValueError(f"ResNetConfig.depth={config.depth}; known: {sorted(STAGE_UNITS)}")
  base = int(64 * config.width)
  size = _conv_out(image_size, 7, 2)
  flops = _conv_flops(size, 7, 3, base)
  size = _conv_out(size, 3, 2)  # Max-pool 3x3, stride 2, padding 1: no FLOPs counted.
  cin = base
  for stage, units in enumerate(STAGE_UNITS[config.depth]):
    nmid = base * 2 ** stage
    nout = nmid if config.depth == 18 else 4 * nmid
    for unit in range(units):
      stride = 2 if (unit == 0 and stage > 0) else 1
      out = _conv_out(size, 3, stride)
      if cin != nout or stride != 1:
        flops += _conv_flops(out, 1, cin, nout)  # conv_proj
      if config.depth == 18:
        flops += _conv_flops(out, 3, cin, nmid) + _conv_flops(out, 3, nmid, nmid)
      else:
        flops += (_conv_flops(size, 1, cin, nmid) + _conv_flops(out, 3, nmid, nmid)
                  + _conv_flops(out, 1, nmid, nout))
      size, cin = out, nout
  return flops, size, cin


def _attention_flops(q_len: int, kv_len: int, emb: int, joined: int) -> int:
  projections = 2 * (2 * q_len + 2 * kv_len) * emb * joined  # q, o on queries; k, v on keys.
  scores_and_values = 2 * 2 * q_len * kv_len * joined
  return projections + scores_and_values


def _mlp_flops(length: int, emb: int, mlp: int) -> int:
  return 2 * 3 * length * emb * mlp  # wi_0, wi_1, wo.


def t5_flops(config: T5Config, input_length: int, target_length: int,
             num_visual_tokens: int) -> tuple[int, int, int]:
  """Forward FLOPs of (text encoder, decoder layers, logits layer) for one example."""
  emb, joined = config.emb_dim, config.num_heads * config.head_dim
  encoder = config.num_encoder_layers * (
      _attention_flops(input_length, input_length, emb, joined)
      + _mlp_flops(input_length, emb, config.mlp_dim))
  encoded = input_length + num_visual_tokens
  decoder = config.num_decoder_layers * (
      _attention_flops(target_length, target_length, emb, joined)
      + _attention_flops(target_length, encoded, emb, joined)
      + _mlp_flops(target_length, emb, config.mlp_dim))
  logits = 2 * target_length * emb * config.vocab_size
  return encoder, decoder, logits


def count_flops(config: VLConfig, input_length: int = 32, target_length: int = 32,
                num_frames: int = 1) -> FlopCount:
  """Forward FLOPs of one example of the vision-language model.

  Args:
    config: the model (its `image_size` fixes the visual grid).
    input_length: text encoder tokens (32 in the paper).
    target_length: decoder tokens.
    num_frames: frames per example (1 for images).

  Returns:
    A `FlopCount`; `.train` is the FLOPs of one example in a train step.

  Raises:
    ValueError: for non-positive lengths or frame counts.
  """
  if min(input_length, target_length, num_frames) < 1:
    raise ValueError(f"lengths and frames must be >= 1, got input_length={input_length}, "
                     f"target_length={target_length}, num_frames={num_frames}")
  resnet, grid, channels = resnet_flops(config.resnet, config.image_size)
  visual_tokens = num_frames * grid * grid
  projection = 2 * visual_tokens * channels * config.t5.emb_dim
  encoder, decoder, logits = t5_flops(config.t5, input_length, target_length,
                                      visual_tokens)
  return FlopCount(resnet=num_frames * resnet, visual_projection=projection,
                   text_encoder=encoder, decoder=decoder, logits=logits)
