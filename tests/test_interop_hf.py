"""Hugging Face interop checked against transformers itself (dynpt/interop/hf.py).

A small random T5 v1.1 is built with transformers and saved with `save_pretrained`;
dynpt imports it, and its logits and cached greedy decoding must equal Hugging Face's;
the export is loaded back with `from_pretrained`. torch and transformers are imported
inside the fixtures, so the rest of the suite does not pay for them.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynpt.interop import exporter, hf, importer
from dynpt.interop.text_tower import CheckpointMismatchError
from dynpt.models import t5

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 640  # The toy vocabulary's padded size, so an import can also be finetuned.
RTOL = 1e-4


def _random_t5(tie: bool, seed: int = 0):
  """A random T5 v1.1 (gated-GELU); untied head unless `tie`.

  transformers 5.x ties lm_head to shared at construction whatever
  tie_word_embeddings says, so the head is untied and re-drawn explicitly. Every
  weight is drawn at std 0.5 so the norms and the position biases matter.
  """
  import torch
  from transformers import T5Config, T5ForConditionalGeneration

  cfg = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                 num_decoder_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 dropout_rate=0.0, tie_word_embeddings=tie)
  torch.manual_seed(seed)
  model = T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.5)
    if not tie:
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
      model.config.tie_word_embeddings = False
  return model


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  """(torch model, its save_pretrained folder) of an untied T5 v1.1."""
  from safetensors.numpy import load_file

  model = _random_t5(tie=False)
  folder = str(tmp_path_factory.mktemp("hf_t5"))
  model.save_pretrained(folder)
  saved = load_file(os.path.join(folder, hf.WEIGHTS_FILE))
  assert "lm_head.weight" in saved  # The trap: the head must really be untied.
  assert not np.allclose(saved["lm_head.weight"], saved["shared.weight"])
  return model, folder


def _tokens(length: int, seed: int):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, VOCAB, (2, length))
  enc[1, length // 2:] = 0  # A padded row.
  dec = rng.integers(2, VOCAB, (2, length))
  dec[:, 0] = 0
  return enc, dec


def _hf_logits(model, enc, dec):
  import torch

  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()


def _dynpt_logits(cfg, tower, enc, dec):
  apply = jax.jit(t5.T5Transformer(cfg).apply)
  return np.asarray(apply({"params": tower}, jnp.asarray(enc), jnp.asarray(dec)))


def _assert_close(ours, theirs):
  err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
  assert err < RTOL, err


@pytest.mark.parametrize("length", [24, 200])  # Below and above max_distance 128.
def test_imported_logits_equal_hugging_face(hf_model, length):
  model, folder = hf_model
  cfg, tower = hf.read(folder)
  assert (cfg.emb_dim, cfg.num_encoder_layers, cfg.num_decoder_layers) == (32, 2, 3)
  enc, dec = _tokens(length, seed=length)
  _assert_close(_dynpt_logits(cfg, tower, enc, dec), _hf_logits(model, enc, dec))


def test_tied_scaled_head_is_folded_into_the_kernel(tmp_path):
  """A config that scales the decoder output (tied, as original T5) imports exactly."""
  model = _random_t5(tie=True, seed=1)
  assert model.config.scale_decoder_outputs
  model.save_pretrained(str(tmp_path))
  cfg, tower = hf.read(str(tmp_path))
  enc, dec = _tokens(16, seed=3)
  _assert_close(_dynpt_logits(cfg, tower, enc, dec), _hf_logits(model, enc, dec))


def _dynpt_greedy(cfg, tower, enc, length):
  """Cached greedy decoding with dynpt's decoder cache (one token per call)."""
  model = t5.T5Transformer(cfg)
  variables = {"params": tower}
  enc = jnp.asarray(enc)
  encoded = jax.jit(lambda v, e: model.apply(v, e, method=model.encode))(variables, enc)
  mask = enc > 0
  _, cache = model.apply(variables, encoded, mask, jnp.zeros((enc.shape[0], length),
                                                             jnp.int32),
                         decode=True, method=model.decode, mutable=["cache"])
  step = jax.jit(lambda c, tok: model.apply({**variables, **c}, encoded, mask, tok,
                                            decode=True, method=model.decode,
                                            mutable=["cache"]))
  token = jnp.zeros((enc.shape[0], 1), jnp.int32)
  out = []
  for _ in range(length):
    logits, cache = step(cache, token)
    token = jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)
    out.append(np.asarray(token[:, 0]))
  return np.stack(out, axis=1)


def _until_eos(row):
  row = [int(t) for t in row]
  return row[:row.index(1) + 1] if 1 in row else row


def test_cached_greedy_decoding_is_token_for_token_hugging_faces(hf_model):
  import torch

  model, folder = hf_model
  cfg, tower = hf.read(folder)
  enc, _ = _tokens(20, seed=7)
  length = 12
  ours = _dynpt_greedy(cfg, tower, enc, length)
  with torch.no_grad():
    theirs = model.generate(input_ids=torch.tensor(enc),
                            attention_mask=torch.tensor(enc > 0), do_sample=False,
                            num_beams=1, max_new_tokens=length, min_new_tokens=0,
                            use_cache=False,  # transformers' cache needs as many
                            # decoder as encoder layers; uncached argmax is the same.
                            decoder_start_token_id=0, eos_token_id=1,
                            pad_token_id=0).numpy()[:, 1:]
  assert theirs.shape[0] == ours.shape[0] == 2
  for a, b in zip(ours, theirs):
    assert _until_eos(a) == _until_eos(b)


def test_import_then_export_loads_in_from_pretrained(hf_model, tmp_path):
  from transformers import T5ForConditionalGeneration

  model, folder = hf_model
  export_dir, hf_dir = str(tmp_path / "export"), str(tmp_path / "hf")
  info = importer.import_checkpoint("hf", folder, export_dir, model="tiny")
  assert info["t5_overrides"]["num_decoder_layers"] == 3  # No named size fits.
  with open(os.path.join(export_dir, "export_info.json")) as f:
    info = json.load(f)
  assert info["vocab_size"] == VOCAB and info["vocabulary_recorded"] is False
  exporter.export_text_tower("hf", export_dir, hf_dir)
  with open(os.path.join(hf_dir, hf.CONFIG_FILE)) as f:
    config = json.load(f)
  assert config["feed_forward_proj"] == "gated-gelu"
  assert config["tie_word_embeddings"] is False
  assert not os.path.exists(os.path.join(hf_dir, hf.SPM_FILE))  # None was imported.
  loaded = T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
  assert loaded.lm_head.weight.data_ptr() != loaded.shared.weight.data_ptr()
  for length in (24, 200):
    enc, dec = _tokens(length, seed=length + 1)
    _assert_close(_hf_logits(loaded, enc, dec), _hf_logits(model, enc, dec))


def _copy_with(folder, dst, tensors=None, config=None):
  from safetensors.numpy import load_file, save_file

  os.makedirs(dst)
  weights = load_file(os.path.join(folder, hf.WEIGHTS_FILE))
  for name, value in (tensors or {}).items():
    if value is None:
      del weights[name]
    else:
      weights[name] = value
  save_file(weights, os.path.join(dst, hf.WEIGHTS_FILE))
  with open(os.path.join(folder, hf.CONFIG_FILE)) as f:
    cfg = json.load(f)
  cfg.update(config or {})
  with open(os.path.join(dst, hf.CONFIG_FILE), "w") as f:
    json.dump(cfg, f)
  return dst


@pytest.mark.parametrize("change, message", [
    (dict(tensors={"decoder.block.2.layer.2.DenseReluDense.wo.weight": None}),
     "'decoder.block.2.layer.2.DenseReluDense.wo.weight' is missing"),
    (dict(tensors={"encoder.block.1.layer.0.SelfAttention.q.weight":
                   np.zeros((32, 16), np.float32)}),
     "'encoder.block.1.layer.0.SelfAttention.q.weight' has shape"),
    (dict(config={"d_ff": 64}), "DenseReluDense.wi_0.weight' has shape"),
    (dict(config={"feed_forward_proj": "relu"}), "feed_forward_proj='relu'"),
    (dict(config={"model_type": "umt5"}), "model_type 'umt5' is not a T5 v1.1"),
    (dict(tensors={"encoder.embed_tokens.weight": np.zeros((VOCAB, 32), np.float32)}),
     "'encoder.embed_tokens.weight' differs from 'shared.weight'"),
])
def test_a_mismatch_names_the_tensor_and_writes_nothing(hf_model, tmp_path, change,
                                                        message):
  _, folder = hf_model
  bad = _copy_with(folder, str(tmp_path / "bad"), **change)
  out_dir = str(tmp_path / "out")
  with pytest.raises(CheckpointMismatchError, match=message):
    importer.import_checkpoint("hf", bad, out_dir, model="tiny")
  assert not os.path.exists(out_dir)


def test_a_bfloat16_checkpoint_imports(tmp_path):
  """Checkpoints saved in bfloat16 (numpy has no such dtype) widen to float32 exactly."""
  import torch

  model16 = _random_t5(tie=False).to(torch.bfloat16)
  model16.save_pretrained(str(tmp_path))
  cfg, tower = hf.read(str(tmp_path))
  want = model16.encoder.block[1].layer[1].DenseReluDense.wo.weight.detach().float().numpy().T
  np.testing.assert_array_equal(tower["encoder"]["layers_1"]["mlp"]["wo"]["kernel"], want)
  assert tower["decoder"]["logits_dense"]["kernel"].dtype == np.float32


@settings(max_examples=6, deadline=None)
@given(layers=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       heads=st.integers(1, 3), head_dim=st.sampled_from([2, 4]),
       emb_dim=st.sampled_from([4, 6]), mlp_dim=st.integers(1, 5),
       buckets=st.sampled_from([8, 32]), max_distance=st.sampled_from([16, 128]),
       vocab=st.integers(2, 40))
def test_write_then_read_is_the_identity_for_any_size(layers, heads, head_dim, emb_dim,
                                                      mlp_dim, buckets, max_distance,
                                                      vocab):
  """hf.write's names and transposes are hf.read's inverse, and config.json carries
  every size (no mapping entry left out or doubled)."""
  import tempfile

  from flax import traverse_util

  from dynpt.interop import text_tower

  sizes = dict(emb_dim=emb_dim, num_heads=heads, head_dim=head_dim, mlp_dim=mlp_dim,
               num_encoder_layers=layers[0], num_decoder_layers=layers[1],
               relative_attention_num_buckets=buckets,
               relative_attention_max_distance=max_distance)
  cfg = text_tower.t5_config(sizes, vocab)
  rng = np.random.default_rng(0)
  shapes = text_tower.expected_shapes(cfg)
  assert sorted(hf.name_map(cfg)) == sorted(shapes)
  assert len({n for n, _ in hf.name_map(cfg).values()}) == len(shapes)
  tower = traverse_util.unflatten_dict(
      {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}, sep="/")
  with tempfile.TemporaryDirectory() as folder:
    hf.write(folder, tower, cfg)
    got_cfg, got = hf.read(folder)
  assert got_cfg == cfg
  flat = traverse_util.flatten_dict(got, sep="/")
  for k, v in traverse_util.flatten_dict(tower, sep="/").items():
    np.testing.assert_array_equal(flat[k], v, err_msg=k)
