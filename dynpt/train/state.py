"""The train state and its sharded initialisation.

Shapes come from `jax.eval_shape` (no allocation); the state is then created
directly in its final sharding under `jit(out_shardings=...)`, so a model that
only fits sharded is never materialised on one device.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from dynpt.train import partitioning


class TrainState(struct.PyTreeNode):
  """Everything the jitted step reads and writes; host-side state lives apart."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # Base PRNG key; per-step keys are fold_in(rng, step).
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, grads: Any) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1,
                        params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


def _is_box(x) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def _init_boxed(init_params_fn: Callable[[jax.Array], Any],
                tx: optax.GradientTransformation, seed: int) -> TrainState:
  rng = jax.random.PRNGKey(seed)
  init_rng, state_rng = jax.random.split(rng)
  boxed = init_params_fn(init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=boxed,
                    opt_state=tx.init(boxed), rng=state_rng, tx=tx)


def state_shardings(init_params_fn: Callable[[jax.Array], Any],
                    tx: optax.GradientTransformation, mesh, rules,
                    seed: int = 0) -> tuple[TrainState, TrainState]:
  """Returns (abstract unboxed state, its NamedShardings) without allocating."""
  abstract = jax.eval_shape(lambda: _init_boxed(init_params_fn, tx, seed))
  shardings = jax.tree.map(
      lambda x: partitioning.param_shardings(x, mesh, rules)
      if _is_box(x) else partitioning.replicated(mesh),
      abstract, is_leaf=_is_box)
  return nn.meta.unbox(abstract), shardings


def create_train_state(init_params_fn: Callable[[jax.Array], Any],
                       tx: optax.GradientTransformation, mesh, rules,
                       seed: int = 0) -> tuple[TrainState, TrainState]:
  """Initialises the state, sharded over `mesh`.

  Args:
    init_params_fn: rng -> boxed params (e.g. `model.init(...)['params']`).
    tx: the optimizer.
    mesh, rules: from `dynpt.train.partitioning`.
    seed: init seed (params, then the base dropout key).

  Returns:
    (state, shardings).
  """
  _, shardings = state_shardings(init_params_fn, tx, mesh, rules, seed)
  init = jax.jit(lambda: nn.meta.unbox(_init_boxed(init_params_fn, tx, seed)),
                 out_shardings=shardings)
  return init(), shardings


def count_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
