"""Can the image tower tell the toy world's shapes apart? (docs/study/transfer.md, section 10)

Trains the model's image tower alone (`dynpt.models.resnet.ResNet` of a named
model size, plus a mean-pooled linear head) as a multi-label classifier of
which shapes (or colours) an image holds, with a direct label for every class
on every image: the strongest signal the image side can get. It reports
per-label accuracy and the rate of exactly right label sets on the validation
split against the base rates (always each label's majority answer; always the
empty set). If this fails at an image size, no pretraining task that asks for
shapes can ground. `tools/shape_probe.py` is its command line.

The images are a toy world's labelled sources (`oi`, `vg`, `in21k`: records
whose `objects/label` ends in the shape name, `vg`'s starting with the
colour), or new scenes drawn by the toy world's own scene sampler and
renderer with restricted shapes, sizes and textures, to test what would make
shapes learnable.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

ATTRIBUTES = ("shape", "color")
EVAL_BATCH = 100


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """What the probe trains on, and how.

  Attributes:
    data_dir: the toy world directory (unless `synthetic`).
    image_size: input size in pixels (the toy records are 64 px; they are resized).
    model: the named model size whose ResNet is probed (`dynpt.models.configs`).
    resnet_width: overrides the size's ResNet width (None: the size's).
    steps: training steps.
    batch_size: examples per step, drawn with replacement.
    learning_rate: Adam's learning rate.
    sources: label sources whose images are pooled (oi, vg, in21k).
    synthetic: if > 0, this many new training scenes (a tenth as many, at
      least 100, for validation) drawn with the options below instead of
      `data_dir`.
    textures: synthetic scenes draw from these textures (empty: all).
    sizes: synthetic scenes draw from these sizes (empty: all).
    shapes: synthetic scenes draw from these shapes (empty: all).
    max_objects: synthetic scenes hold 1 to this many objects.
    attribute: what to classify: 'shape' (a label's last word) or 'color' (a
      `vg` label's first word).
    eval_every: the validation split is scored every this many steps and after
      the last.
  """
  data_dir: str = "data/toy"
  image_size: int = 48
  model: str = "tiny"
  resnet_width: float | None = None
  steps: int = 300
  batch_size: int = 96
  learning_rate: float = 3e-3
  sources: Sequence[str] = ("oi",)
  synthetic: int = 0
  textures: Sequence[str] = ()
  sizes: Sequence[str] = ()
  shapes: Sequence[str] = ()
  max_objects: int = 3
  attribute: str = "shape"
  eval_every: int = 50

  def __post_init__(self):
    if self.attribute not in ATTRIBUTES:
      raise ValueError(f"attribute={self.attribute!r}: expected one of {ATTRIBUTES}")
    for key in ("image_size", "steps", "batch_size", "max_objects", "eval_every"):
      if getattr(self, key) < 1:
        raise ValueError(f"{key}={getattr(self, key)}: must be at least 1")


def load_labelled(data_dir: str, sources: Sequence[str], split: str, size: int,
                  names: Sequence[str] | None, attribute: str
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Images of the sources' `split` at `size` px and their multi-hot labels.

  Returns:
    (images [n, size, size, 3] uint8, labels [n, classes] float32, class names):
    the class names are `names`, else every name that occurs, sorted; a name
    not among them is not labelled.
  """
  import tensorflow as tf

  from dynpt.data import image_ops, schema

  records = [r for source in sources for r in schema.read_records(data_dir, source, split)]
  word = -1 if attribute == "shape" else 0
  labels = [sorted({lab.decode().split()[word] for lab in r["objects/label"]})
            for r in records]
  names = list(names or sorted({n for ls in labels for n in ls}))
  images = np.stack([image_ops.resize(image_ops.decode_image(tf.constant(r["image/encoded"])),
                                      size).numpy() for r in records])
  y = np.zeros((len(records), len(names)), np.float32)
  for i, ls in enumerate(labels):
    for n in ls:
      if n in names:
        y[i, names.index(n)] = 1.0
  return images, y, names


def class_names(cfg: ProbeConfig) -> list[str]:
  """The classes of synthetic scenes: the drawn shapes, or every colour."""
  from dynpt.toyworld import scene as scene_lib

  if cfg.attribute == "shape":
    return sorted(cfg.shapes or scene_lib.SHAPES)
  return sorted(scene_lib.COLORS)


def synthetic_scenes(cfg: ProbeConfig, n: int, seed: int, names: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
  """`n` new 64 px scenes, resized to `cfg.image_size`, and their multi-hot labels."""
  import tensorflow as tf

  from dynpt.data import image_ops
  from dynpt.toyworld import render, scene as scene_lib

  rng = np.random.default_rng(seed)
  pick = lambda opts: str(rng.choice(opts)) if opts else None  # noqa: E731
  images, y = [], np.zeros((n, len(names)), np.float32)
  for i in range(n):
    objs = []
    for _ in range(int(rng.integers(1, cfg.max_objects + 1))):
      o = scene_lib.place_object(rng, objs, 64, shape=pick(cfg.shapes),
                                 size=pick(cfg.sizes), texture=pick(cfg.textures))
      if o is not None:
        objs.append(o)
    image, _ = render.render(scene_lib.Scene(64, pick(list(scene_lib.BACKGROUNDS)), objs))
    images.append(image)
    for o in objs:
      y[i, list(names).index(o.shape if cfg.attribute == "shape" else o.color)] = 1.0
  return image_ops.resize(tf.constant(np.stack(images)), cfg.image_size).numpy(), y


def load_data(cfg: ProbeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                         list[str]]:
  """(train images, train labels, validation images, validation labels, class names)."""
  if cfg.synthetic:
    names = class_names(cfg)
    x_tr, y_tr = synthetic_scenes(cfg, cfg.synthetic, 1, names)
    x_va, y_va = synthetic_scenes(cfg, max(cfg.synthetic // 10, 100), 2, names)
    return x_tr, y_tr, x_va, y_va, names
  x_tr, y_tr, names = load_labelled(cfg.data_dir, cfg.sources, "train", cfg.image_size,
                                    None, cfg.attribute)
  x_va, y_va, _ = load_labelled(cfg.data_dir, cfg.sources, "validation", cfg.image_size,
                                names, cfg.attribute)
  return x_tr, y_tr, x_va, y_va, names


def scores(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  """(per-label accuracy, rate of exactly right label sets) of boolean `pred` [n, classes]."""
  right = pred == (y > 0)
  return float(right.mean()), float(right.all(axis=1).mean())


def base_rates(y: np.ndarray) -> tuple[float, float]:
  """The `scores` of always answering each label's majority, and of always the empty set."""
  per_label = float(np.maximum(y.mean(0), 1 - y.mean(0)).mean())
  return per_label, float((y == 0).all(axis=1).mean())


def train(cfg: ProbeConfig, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray,
          y_va: np.ndarray, log: Callable[[str], None] = print) -> list[dict[str, float]]:
  """Trains the probe; its validation scores every `eval_every` steps and after the last."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from dynpt.models import configs, resnet, vl_model

  size, classes = cfg.image_size, y_tr.shape[1]
  resnet_cfg = configs.get_config(cfg.model, image_size=size).resnet
  if cfg.resnet_width:
    resnet_cfg = dataclasses.replace(resnet_cfg, width=cfg.resnet_width)

  class Probe(nn.Module):
    @nn.compact
    def __call__(self, images):
      fmap = resnet.ResNet(resnet_cfg)(vl_model.normalize_image(images))
      return nn.Dense(classes)(fmap.mean(axis=(1, 2)))

  model = Probe()
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  tx = optax.adam(cfg.learning_rate)
  opt = tx.init(params)

  def loss_fn(p, xb, yb):
    return optax.sigmoid_binary_cross_entropy(model.apply({"params": p}, xb), yb).mean()

  @jax.jit
  def probe_step(p, o, xb, yb):
    loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  predict = jax.jit(lambda p, xb: model.apply({"params": p}, xb) > 0)
  rng = np.random.default_rng(0)
  start, evals = time.time(), []
  for s in range(1, cfg.steps + 1):
    idx = rng.integers(0, len(x_tr), cfg.batch_size)
    params, opt, loss = probe_step(params, opt, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx]))
    if s % cfg.eval_every == 0 or s == cfg.steps:
      pred = np.concatenate([np.asarray(predict(params, jnp.asarray(x_va[i:i + EVAL_BATCH])))
                             for i in range(0, len(x_va), EVAL_BATCH)])
      per_label, exact = scores(pred, y_va)
      evals.append({"step": s, "train_loss": float(loss), "per_label": per_label,
                    "exact": exact})
      log(f"step {s}: train loss {float(loss):.4f}  val per-label acc {per_label:.3f}  "
          f"exact sets {exact:.3f}  ({time.time() - start:.0f} s)")
  return evals


def run(cfg: ProbeConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Loads or draws the images, trains the probe and logs its scores beside the base rates.

  Returns:
    {'evals': `train`'s scores, 'base_per_label', 'base_exact', 'names',
    'train_images', 'validation_images'}.
  """
  x_tr, y_tr, x_va, y_va, names = load_data(cfg)
  evals = train(cfg, x_tr, y_tr, x_va, y_va, log)
  log(f"{len(x_tr)} train / {len(x_va)} validation images of "
      f"{list(cfg.sources) if not cfg.synthetic else 'synthetic scenes'}")
  base_label, modal = base_rates(y_va)
  log(f"base rates: per-label {base_label:.3f} (always the majority answer per label), "
      f"exact sets {modal:.3f} (always 'none'); labels {names}")
  return {"evals": evals, "base_per_label": base_label, "base_exact": modal, "names": names,
          "train_images": len(x_tr), "validation_images": len(x_va)}
