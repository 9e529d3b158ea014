"""The PyTorch peer: the model a PyTorch user would train instead, from well-kept parts.

Same sizes as a dynpt `VLConfig`:
  * text: Hugging Face `T5ForConditionalGeneration` (T5 v1.1: gated-GELU, untied logits)
    with the same width, heads, head size, MLP width, depths and vocabulary;
  * image: Hugging Face `ResNetModel` with only stages 1-3 (the trunk cut after stage 3,
    v1.5 strides on the 3x3 conv), at dynpt's width;
  * fusion as in dynpt: a linear projection of the stage-3 map to d_model, learned row
    and column embeddings, an RMS norm, concatenated after the text encoder outputs and
    fed to the decoder as `encoder_outputs`.
Trained in fp32 with AdamW (weight decay 0.1), global-norm clipping at 1.0, on the same
batch shapes. Differences that favour the peer slightly: HF's ResNet uses BatchNorm
(cheaper than GroupNorm + weight standardisation), its loss has no label smoothing and
the step computes no per-task metrics.

Only the benchmarks import this module (torch is a bench extra: requirements-bench.txt).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import ResNetConfig as HFResNetConfig
from transformers import ResNetModel, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from dynpt.models.configs import VLConfig
from dynpt.models.resnet import STAGE_UNITS, output_channels
from dynpt.models.vl_model import visual_grid_size


class PeerVLModel(nn.Module):
  """ResNet trunk + T5 v1.1 from `transformers`, fused as dynpt fuses them."""

  def __init__(self, config: VLConfig):
    super().__init__()
    t5, rn = config.t5, config.resnet
    if rn.depth == 18:
      raise ValueError("the peer builds bottleneck ResNets only (depth 26, 50 or 101)")
    base = int(64 * rn.width)
    self.resnet = ResNetModel(HFResNetConfig(
        num_channels=3, embedding_size=base,
        hidden_sizes=[base * 4 * 2 ** s for s in range(3)],
        depths=list(STAGE_UNITS[rn.depth]), layer_type="bottleneck", hidden_act="relu",
        downsample_in_first_stage=False, downsample_in_bottleneck=False))
    self.t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=t5.vocab_size, d_model=t5.emb_dim, d_kv=t5.head_dim, d_ff=t5.mlp_dim,
        num_layers=t5.num_encoder_layers, num_decoder_layers=t5.num_decoder_layers,
        num_heads=t5.num_heads, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, dropout_rate=t5.dropout_rate,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    if self.t5.lm_head.weight is self.t5.shared.weight:
      # transformers 5.x ties the logits layer to the embedding despite
      # tie_word_embeddings=False; T5 v1.1 (and dynpt) keep them apart.
      self.t5.config.tie_word_embeddings = False
      self.t5.lm_head.weight = nn.Parameter(self.t5.shared.weight.detach().clone())
    grid = visual_grid_size(config.image_size)
    self.visual_projection = nn.Linear(output_channels(rn), t5.emb_dim)
    self.visual_row = nn.Parameter(torch.randn(grid, t5.emb_dim) * 0.02)
    self.visual_col = nn.Parameter(torch.randn(grid, t5.emb_dim) * 0.02)
    self.visual_norm = nn.RMSNorm(t5.emb_dim, eps=1e-6)

  def forward(self, image, encoder_input_tokens, decoder_input_tokens, labels):
    """Returns the mean token cross-entropy (labels -100 are ignored)."""
    fmap = self.resnet(image).last_hidden_state  # [B, C, g, g]
    x = self.visual_projection(fmap.permute(0, 2, 3, 1))  # [B, g, g, D]
    x = x + self.visual_row[None, :, None, :] + self.visual_col[None, None, :, :]
    visual = self.visual_norm(x.flatten(1, 2))  # [B, g*g, D]
    text_mask = encoder_input_tokens > 0
    text = self.t5.encoder(input_ids=encoder_input_tokens,
                           attention_mask=text_mask.long()).last_hidden_state
    encoded = torch.cat([text, visual], dim=1)  # [B, L + g*g, D]
    mask = torch.cat([text_mask, torch.ones(visual.shape[:2], dtype=torch.bool)], dim=1)
    out = self.t5(encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                  attention_mask=mask.long(), decoder_input_ids=decoder_input_tokens,
                  labels=labels)
    return out.loss


def to_torch_batch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  """dynpt's numpy batch -> the peer's inputs (NCHW float image in [-1, 1])."""
  image = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(batch["decoder_target_tokens"].astype(np.int64))
  labels[torch.from_numpy(batch["decoder_loss_weights"]) == 0] = -100
  return {"image": image,
          "encoder_input_tokens": torch.from_numpy(
              batch["encoder_input_tokens"].astype(np.int64)),
          "decoder_input_tokens": torch.from_numpy(
              batch["decoder_input_tokens"].astype(np.int64)),
          "labels": labels}


class PeerStep:
  """One AdamW train step of the peer on a fixed batch (eager or `torch.compile`d)."""

  def __init__(self, config: VLConfig, batch: dict[str, np.ndarray], *,
               compile_model: bool = False, num_threads: int | None = None, seed: int = 0):
    if num_threads:
      torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    self.model = PeerVLModel(config).train()
    self.forward = torch.compile(self.model) if compile_model else self.model
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.1)
    self.batch = to_torch_batch(batch)
    self.num_params = sum(p.numel() for p in self.model.parameters())

  def run(self) -> float:
    b = self.batch
    image = b["image"].float() / 127.5 - 1.0  # As dynpt.models.vl_model.normalize_image.
    loss = self.forward(image, b["encoder_input_tokens"], b["decoder_input_tokens"],
                        b["labels"])
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.opt.step()
    return float(loss.detach())


def versions() -> dict[str, Any]:
  import transformers

  return {"torch": torch.__version__, "transformers": transformers.__version__,
          "torch_threads": torch.get_num_threads()}


def time_first_call(step: PeerStep) -> float:
  """Seconds of the first step (includes `torch.compile`'s compilation when used)."""
  t = time.perf_counter()
  step.run()
  return time.perf_counter() - t
