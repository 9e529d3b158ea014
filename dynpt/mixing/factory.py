"""Builds any registered sampler by name, handing it what it needs from the run.

A training config names the sampler and its options in `SamplerConfig`
(`gin_configs/runs/pretrain.gin`)::

  SAMPLER = 'dynamic'
  SAMPLER_OPTIONS = {'window': 100, 'min_per_task': 4}

and the trainer calls `make_sampler(name, task_names, global_batch_size,
run=RunFacts(...), **options)`: the options are the user's, `run` is what
the run knows (task sizes, its length, the signal it feeds), and each sampler
takes from it only what it declares in `needs` (`dynpt.mixing.registry`).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

from dynpt.mixing import base
from dynpt.mixing import registry
from dynpt.mixing.registry import NUM_STEPS, SIGNAL, TASK_SIZES, TRAIN_LOSS

SAMPLERS = registry.SAMPLERS  # name -> class; filled as `dynpt.mixing` imports each module.


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What a training run can hand a sampler that declares the need for it.

  Attributes:
    task_sizes: returns examples per task in task order; called only when a
      sampler needs sizes and its options do not give them (counting them
      reads the data).
    num_steps: the run's length in steps.
    signals: the scores the run feeds: `TRAIN_LOSS` (every step's
      `update`), and `VALIDATION` only where the caller also calls
      `update_validation`.
  """
  task_sizes: Callable[[], Sequence[int]] | None = None
  num_steps: int | None = None
  signals: tuple[str, ...] = (TRAIN_LOSS,)


def needs(name: str) -> tuple[str, ...]:
  """The needs the sampler `name` declares (`dynpt.mixing.registry`)."""
  return tuple(sampler_class(name).needs)


def sampler_class(name: str) -> type:
  """The registered class of `name`.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; known samplers are {sorted(SAMPLERS)}")
  return SAMPLERS[name]


def make_sampler(name: str, task_names: Sequence[str], global_batch_size: int, *,
                 run: RunFacts | None = None, **options: Any) -> base.Sampler:
  """Returns the sampler `name` for these tasks and global batch size.

  Args:
    name: a registered sampler (`SAMPLERS`; docs/mixing.md lists them).
    task_names: tasks in task-id order.
    global_batch_size: B, summed over all hosts.
    run: what the run knows; each need the sampler declares and `options`
      leave out is filled from it. None: the options must give every need
      the sampler cannot do without.
    **options: the sampler's keyword options (see each class), for example
      `window=` for "dynamic" or `weights=` for "fixed".

  Raises:
    ValueError: for an unknown name, an option the sampler does not take, a
      required need neither given nor known to the run, a signal the run
      does not feed, or any bad option value; naming it.
  """
  cls = sampler_class(name)
  options = dict(options)
  if run is not None:
    _fill_needs(name, cls, task_names, run, options)
  missing = [n for n in cls.needs
             if n not in options and _default(cls, n) is inspect.Parameter.empty]
  if missing:
    raise ValueError(f"sampler {name!r} needs {', '.join(m + '=' for m in missing)}: "
                     "give it in the options, or build the sampler through a "
                     "training run that knows it")
  try:
    return cls(task_names, global_batch_size, **options)
  except TypeError as e:
    raise ValueError(f"sampler {name!r}: bad options {sorted(options)}: {e}") from e


def _fill_needs(name: str, cls: type, task_names: Sequence[str], run: RunFacts,
                options: dict[str, Any]) -> None:
  """Adds to `options` each need of `cls` they leave out and `run` knows."""
  if TASK_SIZES in cls.needs and TASK_SIZES not in options and run.task_sizes is not None:
    sizes = list(run.task_sizes())
    if len(sizes) != len(task_names):
      raise ValueError(f"sampler {name!r}: the run gave {len(sizes)} task sizes for "
                       f"{len(task_names)} tasks")
    options[TASK_SIZES] = sizes
  if NUM_STEPS in cls.needs and NUM_STEPS not in options and run.num_steps is not None:
    options[NUM_STEPS] = int(run.num_steps)
  if SIGNAL in cls.needs:
    fed = [s for s in cls.SIGNALS if s in run.signals]
    if not fed:
      raise ValueError(f"sampler {name!r} learns from {' or '.join(cls.SIGNALS)} scores, "
                       f"but the run feeds only {', '.join(run.signals)}")
    if SIGNAL not in options:
      default = _default(cls, SIGNAL)
      options[SIGNAL] = default if default in fed else fed[0]
    elif options[SIGNAL] not in run.signals:
      raise ValueError(
          f"sampler {name!r}: signal={options[SIGNAL]!r}, but the run feeds it no "
          f"{options[SIGNAL]} scores (it feeds {', '.join(run.signals)}); use "
          f"signal={fed[0]!r} (the default here)")


def _default(cls: type, option: str) -> Any:
  """The default of `option` in the first `__init__` along the MRO that names it
  (subclasses may pass it on through `**options`); `inspect.Parameter.empty`
  when it is required, None when no `__init__` names it."""
  for klass in cls.__mro__:
    init = klass.__dict__.get("__init__")
    if init is not None and option in inspect.signature(init).parameters:
      return inspect.signature(init).parameters[option].default
  return None
