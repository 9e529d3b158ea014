"""Builds any sampler by name; this is the function gin binds.

A gin config selects the mixing strategy with one binding, for example::

  from __gin__ import dynamic_registration
  from dynpt import mixing
  train.sampler = @mixing.make_sampler()
  mixing.make_sampler.name = "dynamic"
  mixing.make_sampler.window = 100
"""

from __future__ import annotations

from typing import Any, Sequence

from dynpt.mixing import ado
from dynpt.mixing import base
from dynpt.mixing import difficulty
from dynpt.mixing import doremi
from dynpt.mixing import odm
from dynpt.mixing import softmax
from dynpt.mixing import static
from dynpt.mixing import stop_and_go

SAMPLERS: dict[str, type[base.Sampler]] = {
    "dynamic": difficulty.DynamicSampler,
    "uniform": static.UniformSampler,
    "size": static.SizeSampler,
    "temperature": static.TemperatureSampler,
    "fixed": static.FixedSampler,
    "easiest": difficulty.EasiestSampler,
    "hardest": difficulty.HardestSampler,
    "loss_reweight": difficulty.LossReweightSampler,
    "dsg": stop_and_go.StopAndGoSampler,
    "curriculum": stop_and_go.CurriculumSampler,
    "anti_curriculum": stop_and_go.AntiCurriculumSampler,
    "odm": odm.OnlineDataMixingSampler,
    "doremi": doremi.DoReMiSampler,
    "ado": ado.AdoSampler,
    "softmax": softmax.SoftmaxSampler,
}


def make_sampler(name: str, task_names: Sequence[str], global_batch_size: int,
                 **options: Any) -> base.Sampler:
  """Returns the sampler `name` for these tasks and global batch size.

  Args:
    name: one of `SAMPLERS` ("dynamic", "uniform", "size", "temperature",
      "fixed", "easiest", "hardest", "loss_reweight", "dsg", "curriculum",
      "anti_curriculum", and the online mixers of the literature "odm",
      "doremi", "ado", "softmax").
    task_names: tasks in task-id order.
    global_batch_size: B, summed over all hosts.
    **options: the sampler's keyword options (see each class); for example
      `task_sizes=` for "size" and "temperature", `weights=` for "fixed",
      `reference_run_dir=` for "doremi".

  Raises:
    ValueError: for an unknown name or an option the sampler does not take,
      naming it, or any bad option value.
  """
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; known samplers are {sorted(SAMPLERS)}")
  cls = SAMPLERS[name]
  try:
    return cls(task_names, global_batch_size, **options)
  except TypeError as e:
    raise ValueError(f"sampler {name!r}: bad options {sorted(options)}: {e}") from e
