"""Hugging Face T5 v1.1 folders: `config.json` + `model.safetensors`, read and written
with numpy (no PyTorch needed).

The names map one-to-one onto dynpt's (T5X's) text tower:

  shared.weight                                     token_embedder/embedding
  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o} encoder/layers_{i}/attention/
                                                      {query,key,value,out}
  encoder.block.0.layer.0.SelfAttention.            encoder/relpos_bias/rel_embedding
    relative_attention_bias                           (one table per stack)
  decoder.block.{i}.layer.1.EncDecAttention.*       decoder/layers_{i}/
                                                      encoder_decoder_attention/*
  *.DenseReluDense.{wi_0,wi_1,wo}                   */mlp/{wi_0,wi_1,wo}
  *.layer_norm / final_layer_norm                   pre_*_layer_norm / {en,de}coder_norm
  lm_head.weight                                    decoder/logits_dense/kernel

torch's Linear keeps weights [out, in] and the bias table [buckets, heads]; dynpt keeps
kernels [in, out] and the table [heads, buckets], so those are transposed.

The head: v1.1 has its own `lm_head`, and transformers applies `d_model**-0.5` to the
decoder output only when the config asks for it (`scale_decoder_outputs`, else
`tie_word_embeddings` is not false, as `T5Config` decides). transformers 5.x ties
`lm_head` to `shared` whenever it builds a model and drops a tied `lm_head` from
`model.safetensors`; the import takes `lm_head.weight` when the file has it (else
`shared.weight`) and folds the scale, if any, into the kernel, so the logits are the
same either way. The export always writes an untied head and `tie_word_embeddings:
false`, which `from_pretrained` loads untied.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from dynpt import fs
from dynpt.interop import text_tower
from dynpt.interop.text_tower import CheckpointMismatchError
from dynpt.models import configs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SPM_FILE = "spiece.model"
_ATTENTION = (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))
_MLP = ("wi_0", "wi_1", "wo")
_EPSILON = 1e-6  # dynpt's RMSNorm epsilon (T5's).


def name_map(cfg: configs.T5Config) -> dict[str, tuple[str, bool]]:
  """dynpt path -> (Hugging Face tensor name, transposed?) for every text-tower param."""
  out = {"token_embedder/embedding": ("shared.weight", False),
         "decoder/logits_dense/kernel": ("lm_head.weight", True)}
  stacks = (("encoder", cfg.num_encoder_layers,
             (("attention", "SelfAttention", "pre_attention_layer_norm"),)),
            ("decoder", cfg.num_decoder_layers,
             (("self_attention", "SelfAttention", "pre_self_attention_layer_norm"),
              ("encoder_decoder_attention", "EncDecAttention",
               "pre_cross_attention_layer_norm"))))
  for stack, num_layers, attentions in stacks:
    out[f"{stack}/relpos_bias/rel_embedding"] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True)
    out[f"{stack}/{stack}_norm/scale"] = (f"{stack}.final_layer_norm.weight", False)
    for i in range(num_layers):
      ours, theirs = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      for j, (attention, hf_attention, norm) in enumerate(attentions):
        for hf_proj, proj in _ATTENTION:
          out[f"{ours}/{attention}/{proj}/kernel"] = (
              f"{theirs}.{j}.{hf_attention}.{hf_proj}.weight", True)
        out[f"{ours}/{norm}/scale"] = (f"{theirs}.{j}.layer_norm.weight", False)
      j = len(attentions)
      for proj in _MLP:
        out[f"{ours}/mlp/{proj}/kernel"] = (f"{theirs}.{j}.DenseReluDense.{proj}.weight",
                                            True)
      out[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{theirs}.{j}.layer_norm.weight", False)
  return out


def read_config(folder: str) -> tuple[configs.T5Config, bool]:
  """(T5Config, whether the decoder output is scaled by d_model**-0.5) of a folder."""
  path = fs.join(folder, CONFIG_FILE)
  if not fs.isfile(path):
    raise FileNotFoundError(f"{path} not found: not a Hugging Face model folder")
  try:
    hf = json.loads(fs.read_text(path))
  except ValueError as e:  # Not JSON, or not UTF-8 text.
    raise CheckpointMismatchError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(hf, dict):
    raise CheckpointMismatchError(f"{path}: not a JSON object ({type(hf).__name__})")

  def get(key: str, default: Any = None) -> Any:
    if key not in hf and default is None:
      raise CheckpointMismatchError(f"{path}: key {key!r} is missing")
    value = hf.get(key, default)
    if key in _SIZE_KEYS and (isinstance(value, bool) or not isinstance(value, int)
                              or value <= 0):
      raise CheckpointMismatchError(f"{path}: {key}={value!r} is not a positive "
                                    "integer")
    return value

  # mT5 is T5 v1.1 with a larger vocabulary; umT5 (a bias table per layer) is not.
  if hf.get("model_type", "t5") not in ("t5", "mt5"):
    raise CheckpointMismatchError(f"{path}: model_type {hf['model_type']!r} is not a "
                                  "T5 v1.1 ('t5' or 'mt5')")
  ff = hf.get("feed_forward_proj", "relu")
  if ff != "gated-gelu":
    raise CheckpointMismatchError(
        f"{path}: feed_forward_proj={ff!r}; dynpt's text tower is T5 v1.1 ('gated-gelu')")
  try:
    eps = float(hf.get("layer_norm_epsilon", _EPSILON))
  except (TypeError, ValueError):
    raise CheckpointMismatchError(f"{path}: layer_norm_epsilon="
                                  f"{hf['layer_norm_epsilon']!r} is not a number") from None
  if abs(eps - _EPSILON) > 1e-12:
    raise CheckpointMismatchError(f"{path}: layer_norm_epsilon={eps}; dynpt's T5 uses "
                                  f"{_EPSILON}")
  num_layers = get("num_layers")
  sizes = dict(emb_dim=get("d_model"), num_heads=get("num_heads"), head_dim=get("d_kv"),
               mlp_dim=get("d_ff"), num_encoder_layers=num_layers,
               num_decoder_layers=(get("num_decoder_layers", num_layers)
                                   if hf.get("num_decoder_layers") else num_layers),
               relative_attention_num_buckets=get("relative_attention_num_buckets", 32),
               relative_attention_max_distance=get("relative_attention_max_distance",
                                                   128))
  if "scale_decoder_outputs" in hf:
    scaled = bool(hf["scale_decoder_outputs"])
  else:
    scaled = hf.get("tie_word_embeddings") is not False
  return text_tower.t5_config(sizes, get("vocab_size")), scaled


_SIZE_KEYS = frozenset(("num_layers", "num_decoder_layers", "d_model", "num_heads", "d_kv",
                        "d_ff", "vocab_size", "relative_attention_num_buckets",
                        "relative_attention_max_distance"))
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                      "I64": np.int64, "I32": np.int32}


def _load_with_bfloat16(file: str, raw: bytes) -> dict[str, np.ndarray]:
  """Reads a safetensors file whose tensors numpy cannot name (BF16 checkpoints).

  The format is an 8-byte little-endian header length, a JSON header {name: {dtype,
  shape, data_offsets}} and the raw little-endian data; BF16 is read through
  ml_dtypes (a JAX dependency) and widened to float32.
  """
  import ml_dtypes

  dtypes = dict(_SAFETENSORS_DTYPES, BF16=ml_dtypes.bfloat16)
  header_len = int.from_bytes(raw[:8], "little")
  if len(raw) < 8 or header_len > len(raw) - 8:
    raise CheckpointMismatchError(f"{file}: truncated (a header of {header_len} bytes "
                                  f"in a file of {len(raw)})")
  header = json.loads(raw[8:8 + header_len])
  data = memoryview(raw)[8 + header_len:]
  out = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in dtypes:
      raise CheckpointMismatchError(f"{file}: tensor {name!r} has dtype "
                                    f"{entry['dtype']}, which is not read")
    begin, end = entry["data_offsets"]
    if not 0 <= begin <= end <= len(data):
      raise CheckpointMismatchError(f"{file}: tensor {name!r} lies at bytes "
                                    f"[{begin}, {end}) of {len(data)} (truncated?)")
    value = np.frombuffer(data[begin:end], dtype=np.dtype(dtypes[entry["dtype"]]))
    out[name] = value.reshape(entry["shape"]).astype(np.float32)
  return out


def _shard_names(index: str) -> list[str]:
  """The shard files a sharded checkpoint's index lists (`weight_map` values), each a
  relative path inside its folder (no absolute path, no `..`)."""
  try:
    contents = json.loads(fs.read_text(index))
  except ValueError as e:
    raise CheckpointMismatchError(f"{index}: not valid JSON ({e})") from e
  weight_map = contents.get("weight_map") if isinstance(contents, dict) else None
  if not isinstance(weight_map, dict) or not weight_map:
    raise CheckpointMismatchError(f"{index}: no 'weight_map' object (tensor name -> "
                                  "shard file), so the shards are unknown")
  names = set()
  for tensor, name in weight_map.items():
    parts = name.split("/") if isinstance(name, str) else [""]
    if (any(p in ("", ".", "..") for p in parts) or "\\" in name or "://" in name):
      raise CheckpointMismatchError(f"{index}: tensor {tensor!r} is in {name!r}, which "
                                    "is not a file name inside the checkpoint folder")
    names.add(name)
  return sorted(names)


def _load_safetensors(folder: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load

  path = fs.join(folder, WEIGHTS_FILE)
  index = path + ".index.json"
  if fs.isfile(path):
    files = [path]
  elif fs.isfile(index):  # Sharded: model-0000x-of-0000n.safetensors.
    files = [fs.join(folder, name) for name in _shard_names(index)]
    missing = [f for f in files if not fs.isfile(f)]
    if missing:
      raise CheckpointMismatchError(f"{index}: lists {missing[0]}, which does not exist")
  else:
    raise FileNotFoundError(f"{path} not found (only safetensors weights are read; "
                            "save with `save_pretrained(..., safe_serialization=True)`)")
  tensors = {}
  for file in files:
    try:
      raw = fs.read_bytes(file)
      try:
        tensors.update(load(raw))
      except (TypeError, KeyError):  # numpy has no bfloat16 (KeyError: 'BF16').
        tensors.update(_load_with_bfloat16(file, raw))
    except CheckpointMismatchError:
      raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, OverflowError) as e:  # Whatever a malformed header gives.
      raise CheckpointMismatchError(f"{file}: not a readable safetensors file "
                                    f"({type(e).__name__}: {e})") from e
  return tensors


def read(folder: str) -> tuple[configs.T5Config, dict[str, Any]]:
  """(T5Config, text tower params) of a Hugging Face T5 v1.1 folder.

  Raises:
    FileNotFoundError: when config.json or the weights are absent.
    CheckpointMismatchError: a config that is not T5 v1.1, a missing tensor or one whose
      shape differs from the config, named.
  """
  cfg, scaled = read_config(folder)
  tensors = _load_safetensors(folder)
  source = fs.join(folder, WEIGHTS_FILE)
  if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
    tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
  for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    if name in tensors and "shared.weight" in tensors and not np.array_equal(
        tensors[name], tensors["shared.weight"]):
      raise CheckpointMismatchError(
          f"{source}: tensor {name!r} differs from 'shared.weight'; T5 (and dynpt) "
          "share one token embedding between encoder and decoder")
  if "lm_head.weight" not in tensors and "shared.weight" in tensors:
    tensors["lm_head.weight"] = tensors["shared.weight"]  # Saved tied.
  mapping = name_map(cfg)
  flat = {}
  for path, (name, transposed) in mapping.items():
    if name not in tensors:
      raise CheckpointMismatchError(f"{source}: tensor {name!r} is missing")
    value = np.asarray(tensors[name], np.float32)
    flat[path] = value.T if transposed and value.ndim == 2 else value
  if scaled:
    flat["decoder/logits_dense/kernel"] = (
        flat["decoder/logits_dense/kernel"] * np.float32(cfg.emb_dim ** -0.5))
  params = traverse_util.unflatten_dict(flat, sep="/")
  text_tower.check_text_tower(params, cfg, source,
                              {p: n for p, (n, _) in mapping.items()})
  return cfg, params


def hf_config(cfg: configs.T5Config) -> dict[str, Any]:
  """config.json for `T5ForConditionalGeneration` (v1.1: gated-GELU, untied head)."""
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": cfg.vocab_size, "d_model": cfg.emb_dim, "d_kv": cfg.head_dim,
      "d_ff": cfg.mlp_dim, "num_layers": cfg.num_encoder_layers,
      "num_decoder_layers": cfg.num_decoder_layers, "num_heads": cfg.num_heads,
      "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
      "relative_attention_max_distance": cfg.relative_attention_max_distance,
      "dropout_rate": 0.1, "layer_norm_epsilon": _EPSILON, "initializer_factor": 1.0,
      "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
      "tie_word_embeddings": False, "scale_decoder_outputs": False,
      "is_encoder_decoder": True, "use_cache": True, "pad_token_id": 0,
      "eos_token_id": 1, "decoder_start_token_id": 0}


def write(out_dir: str, params: Mapping[str, Any], cfg: configs.T5Config,
          spm_path: str | None = None) -> dict[str, str]:
  """Writes config.json, model.safetensors (and spiece.model) for `from_pretrained`.

  Args:
    out_dir: the folder to write (created).
    params: the text tower in dynpt's names.
    cfg: its config (checked against `params` first).
    spm_path: the sentencepiece model to copy beside it as spiece.model.

  Returns:
    {what: path} of the files written.
  """
  from safetensors.numpy import save

  text_tower.check_text_tower(params, cfg, "text tower")
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  tensors = {}
  for path, (name, transposed) in name_map(cfg).items():
    value = np.asarray(flat[path], np.float32)
    tensors[name] = np.ascontiguousarray(value.T if transposed else value)
  fs.makedirs(out_dir)
  written = {"config": fs.join(out_dir, CONFIG_FILE),
             "weights": fs.join(out_dir, WEIGHTS_FILE)}
  fs.write_bytes(written["weights"], save(tensors, metadata={"format": "pt"}))
  fs.write_text(written["config"], json.dumps(hf_config(cfg), indent=1))
  if spm_path:
    written["vocabulary"] = fs.join(out_dir, SPM_FILE)
    if fs.absolute(spm_path) != fs.absolute(written["vocabulary"]):
      fs.copy(spm_path, written["vocabulary"])
  return written
