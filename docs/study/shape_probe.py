r"""Can the tiny ResNet tell the toy world's shapes apart? (docs/study/transfer.md, section 10)

Trains the model's image tower alone (`dynpt.models.resnet.ResNet` of a named model size,
plus a mean-pooled linear head) as a multi-label classifier of which shapes a toy `oi`
image holds, with direct supervision of every label, and reports per-label accuracy and
the rate of exactly right label sets on the validation split against the base rates.
If this fails at an image size, no pretraining task that asks for shapes can ground.

  python docs/study/shape_probe.py --data_dir=/tmp/tr/data --image_size=48 --steps=300
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

_DATA_DIR = flags.DEFINE_string("data_dir", "data/toy", "Toy world directory.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 48, "Input size (records are 64 px).")
_MODEL = flags.DEFINE_string("model", "tiny", "Named model size whose ResNet is probed.")
_WIDTH = flags.DEFINE_float("resnet_width", None, "Overrides the size's ResNet width.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", 96, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
_SOURCES = flags.DEFINE_list("sources", ["oi"], "Label sources whose objects/label end in "
                             "the shape name (oi, vg, in21k); their images are pooled.")
_SYNTHETIC = flags.DEFINE_integer(
    "synthetic", 0, "If > 0: instead of the data dir, this many train scenes (a tenth as "
    "many validation) drawn by the toy world's own scene sampler and renderer, with the "
    "options below, to test what would make shapes learnable.")
_TEXTURES = flags.DEFINE_list("textures", [], "Synthetic: textures to draw from (default all).")
_SIZES = flags.DEFINE_list("sizes", [], "Synthetic: sizes to draw from (default all).")
_SHAPES = flags.DEFINE_list("shapes", [], "Synthetic: shapes to draw from (default all).")
_MAX_OBJECTS = flags.DEFINE_integer("max_objects", 3, "Synthetic: objects per scene, 1..this.")
_ATTRIBUTE = flags.DEFINE_enum("attribute", "shape", ["shape", "color"],
                               "What to classify: the label's last word (shape) or, for vg "
                               "labels 'colour shape', its first (colour).")


def _load(data_dir: str, sources: list[str], split: str, size: int, names: list[str] | None):
  import numpy as np
  import tensorflow as tf

  from dynpt.data import image_ops, schema

  records = [r for source in sources for r in schema.read_records(data_dir, source, split)]
  word = -1 if _ATTRIBUTE.value == "shape" else 0
  labels = [sorted({lab.decode().split()[word] for lab in r["objects/label"]})
            for r in records]
  names = names or sorted({n for ls in labels for n in ls})
  images = np.stack([image_ops.resize(image_ops.decode_image(tf.constant(r["image/encoded"])),
                                      size).numpy() for r in records])
  y = np.zeros((len(records), len(names)), np.float32)
  for i, ls in enumerate(labels):
    for n in ls:
      if n in names:
        y[i, names.index(n)] = 1.0
  return images, y, names


def _synthetic(n: int, size: int, seed: int, names: list[str]):
  import numpy as np

  from dynpt.toyworld import render, scene as scene_lib

  rng = np.random.default_rng(seed)
  pick = lambda opts: str(rng.choice(opts)) if opts else None  # noqa: E731
  images, y = [], np.zeros((n, len(names)), np.float32)
  for i in range(n):
    objs = []
    for _ in range(int(rng.integers(1, _MAX_OBJECTS.value + 1))):
      o = scene_lib.place_object(rng, objs, 64, shape=pick(_SHAPES.value),
                                 size=pick(_SIZES.value), texture=pick(_TEXTURES.value))
      if o is not None:
        objs.append(o)
    image, _ = render.render(scene_lib.Scene(64, pick(list(scene_lib.BACKGROUNDS)), objs))
    images.append(image)
    for o in objs:
      y[i, names.index(o.shape if _ATTRIBUTE.value == "shape" else o.color)] = 1.0
  import tensorflow as tf

  from dynpt.data import image_ops
  return image_ops.resize(tf.constant(np.stack(images)), size).numpy(), y


def main(argv):
  del argv
  from dynpt import hostalloc
  hostalloc.configure_process()
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from dynpt.models import configs, resnet, vl_model

  size = _IMAGE_SIZE.value
  if _SYNTHETIC.value:
    from dynpt.toyworld import scene as scene_lib
    names = sorted(_SHAPES.value or scene_lib.SHAPES) if _ATTRIBUTE.value == "shape" else \
        sorted(scene_lib.COLORS)
    x_tr, y_tr = _synthetic(_SYNTHETIC.value, size, 1, names)
    x_va, y_va = _synthetic(max(_SYNTHETIC.value // 10, 100), size, 2, names)
  else:
    x_tr, y_tr, names = _load(_DATA_DIR.value, _SOURCES.value, "train", size, None)
    x_va, y_va, _ = _load(_DATA_DIR.value, _SOURCES.value, "validation", size, names)
  cfg = configs.get_config(_MODEL.value, image_size=size).resnet
  if _WIDTH.value:
    import dataclasses
    cfg = dataclasses.replace(cfg, width=_WIDTH.value)

  class Probe(nn.Module):
    @nn.compact
    def __call__(self, images):
      fmap = resnet.ResNet(cfg)(vl_model.normalize_image(images))
      return nn.Dense(len(names))(fmap.mean(axis=(1, 2)))

  model = Probe()
  params = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  tx = optax.adam(_LR.value)
  opt = tx.init(params)

  def loss_fn(p, xb, yb):
    return optax.sigmoid_binary_cross_entropy(model.apply({"params": p}, xb), yb).mean()

  @jax.jit
  def step(p, o, xb, yb):
    loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  predict = jax.jit(lambda p, xb: model.apply({"params": p}, xb) > 0)
  rng = np.random.default_rng(0)
  start = time.time()
  for s in range(1, _STEPS.value + 1):
    idx = rng.integers(0, len(x_tr), _BATCH.value)
    params, opt, loss = step(params, opt, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx]))
    if s % 50 == 0 or s == _STEPS.value:
      pred = np.concatenate([np.asarray(predict(params, jnp.asarray(x_va[i:i + 100])))
                             for i in range(0, len(x_va), 100)])
      per_label = (pred == (y_va > 0)).mean()
      exact = (pred == (y_va > 0)).all(axis=1).mean()
      print(f"step {s}: train loss {float(loss):.4f}  val per-label acc {per_label:.3f}  "
            f"exact sets {exact:.3f}  ({time.time() - start:.0f} s)", flush=True)
  print(f"{len(x_tr)} train / {len(x_va)} validation images of {_SOURCES.value if not _SYNTHETIC.value else 'synthetic scenes'}")
  base_label = np.maximum(y_va.mean(0), 1 - y_va.mean(0)).mean()
  modal = (y_va == 0).all(axis=1).mean()
  print(f"base rates: per-label {base_label:.3f} (always the majority answer per label), "
        f"exact sets {modal:.3f} (always 'none'); labels {names}")


if __name__ == "__main__":
  app.run(main)
