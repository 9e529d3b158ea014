"""Loss math against numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.train import losses


def _np_ce(logits, targets, ls):
  v = logits.shape[-1]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  q = np.full(logits.shape, ls / (v - 1))
  np.put_along_axis(q, targets[..., None], 1 - ls, axis=-1)
  ent = -(q * np.log(np.where(q > 0, q, 1))).sum(-1)
  return -(q * logp).sum(-1) - ent, -np.take_along_axis(logp, targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("ls", [0.0, 0.1, 0.3])
def test_cross_entropy_matches_numpy(ls):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, size=(3, 5))
  smoothed, nll = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), ls)
  exp_s, exp_n = _np_ce(logits.astype(np.float64), targets, ls)
  np.testing.assert_allclose(nll, exp_n, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(smoothed, exp_s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_cross_entropy_gradient_is_softmax_minus_soft_targets(ls):
  """The custom VJP against the analytic gradient, with weights on both outputs."""
  rng = np.random.default_rng(1)
  logits = (3 * rng.normal(size=(2, 4, 7))).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 4))
  ws, wn = rng.random((2, 4)), rng.random((2, 4))

  def objective(x):
    smoothed, nll = losses.cross_entropy(x, jnp.asarray(targets), ls)
    return jnp.sum(smoothed * ws) + jnp.sum(nll * wn)

  grad = jax.grad(objective)(jnp.asarray(logits))
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  onehot = np.eye(7)[targets]
  q = np.where(onehot > 0, 1 - ls, ls / 6)
  expected = ws[..., None] * (p - q) + wn[..., None] * (p - onehot)
  np.testing.assert_allclose(grad, expected, atol=1e-5)
  # And under jit, as the train step runs it.
  jax.jit(jax.grad(objective))(jnp.asarray(logits))


def test_per_task_sums_and_mixture_losses():
  rng = np.random.default_rng(1)
  vals = rng.random((6, 4)).astype(np.float32)
  w = (rng.random((6, 4)) > 0.3).astype(np.float32)
  tid = np.array([0, 0, 1, 2, 2, 2])
  sums, counts = losses.per_task_sums(jnp.asarray(vals), jnp.asarray(w), jnp.asarray(tid), 4)
  for t in range(4):
    np.testing.assert_allclose(sums[t], (vals * w)[tid == t].sum(), rtol=1e-6)
    np.testing.assert_allclose(counts[t], w[tid == t].sum())
  ones = jnp.ones(4)
  tok = losses.mixture_loss(vals, w, tid, ones, "tokens")
  np.testing.assert_allclose(tok, (vals * w).sum() / w.sum(), rtol=1e-6)
  mean = losses.mixture_loss(vals, w, tid, ones, "task_mean")
  expected = sum((vals * w)[tid == t].sum() / w[tid == t].sum() for t in range(3))
  np.testing.assert_allclose(mean, expected, rtol=1e-5)
  weights = jnp.asarray([2.0, 0.0, 1.0, 1.0])
  tok_w = losses.mixture_loss(vals, w, tid, weights, "tokens")
  ex_w = np.asarray(weights)[tid][:, None]
  np.testing.assert_allclose(tok_w, (vals * w * ex_w).sum() / w.sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="bogus"):
    losses.mixture_loss(vals, w, tid, ones, "bogus")


def test_gradient_of_task_mean_is_finite_with_absent_task():
  vals = jnp.ones((2, 3))
  w = jnp.ones((2, 3))
  tid = jnp.array([0, 0])
  g = jax.grad(lambda v: losses.mixture_loss(v, w, tid, jnp.ones(3), "task_mean"))(vals)
  assert np.all(np.isfinite(g))
