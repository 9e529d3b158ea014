"""The sampler registry: every sampler registers itself and declares its needs.

A sampler class registers under its `name` with `@registry.register` and
lists in `needs` what it takes from the run rather than from the user:

  TASK_SIZES   option `task_sizes`: examples per task (the run counts the
               split named by `SamplerConfig.size_split`).
  NUM_STEPS    option `num_steps`: the run's length in steps.
  SIGNAL       option `signal`: which score the sampler learns from, one of
               its `SIGNALS`; the run says which it feeds (`RunFacts.signals`)
               and the sampler gets one of those.
  REFERENCE_RUN  option `reference_run_dir`: an earlier run; only the user
               can name it, so a missing one is an error naming the option.

`factory.make_sampler(name, task_names, global_batch_size, run=facts,
**options)` fills each declared need the options leave out from `run` (a
`factory.RunFacts`), so a trainer hands over what it knows about the run and
never names a sampler. Options the user gives always win.

Adding a sampler: a module in `dynpt/mixing` whose class is decorated with
`@registry.register` (`unimax.py` is the example to copy), one import line in
`dynpt/mixing/__init__.py`, a gin file and tests (docs/mixing.md).
"""

from __future__ import annotations

TASK_SIZES = "task_sizes"
NUM_STEPS = "num_steps"
SIGNAL = "signal"
REFERENCE_RUN = "reference_run_dir"
NEEDS = (TASK_SIZES, NUM_STEPS, SIGNAL, REFERENCE_RUN)

TRAIN_LOSS = "train_loss"    # Every step's per-task training loss (`Sampler.update`).
VALIDATION = "validation"    # Per-task validation scores (`update_validation`).

DEFAULT_SAMPLER = "dynamic"  # The paper's sampler: `SamplerConfig`'s default.
EVEN_SAMPLER = "uniform"     # The same share for every task (finetuning's default).

SAMPLERS: dict[str, type] = {}  # name -> sampler class, in registration order.


def register(cls: type) -> type:
  """Class decorator: adds `cls` to `SAMPLERS` under `cls.name`.

  Raises:
    ValueError: for a name registered twice (a subclass that forgot its own
      `name`), a need outside `NEEDS`, or the signal need without `SIGNALS`.
  """
  name = getattr(cls, "name", "")
  if not isinstance(name, str) or not name or name in SAMPLERS:
    raise ValueError(f"sampler class {cls.__qualname__}: name {name!r} is empty or "
                     "already registered; give the class its own `name`")
  unknown = sorted(set(getattr(cls, "needs", ())) - set(NEEDS))
  if unknown:
    raise ValueError(f"sampler {name!r} declares unknown needs {unknown}; known needs "
                     f"are {list(NEEDS)}")
  if SIGNAL in cls.needs and not set(getattr(cls, "SIGNALS", ())) <= {TRAIN_LOSS, VALIDATION}:
    raise ValueError(f"sampler {name!r} needs a signal: list the ones it learns from in "
                     f"SIGNALS, of {TRAIN_LOSS!r} and {VALIDATION!r}")
  if SIGNAL in cls.needs and not getattr(cls, "SIGNALS", ()):
    raise ValueError(f"sampler {name!r} needs a signal but lists no SIGNALS")
  SAMPLERS[name] = cls
  return cls
