"""How a converter leaves an input out: `Skip` (raised) and `Skipped` (yielded).

`make_record` and the image and file readers raise `Skip(reason)` for an expected
failure of one item (a missing or corrupt image, a file over the size limit); the
listing functions yield `Skipped(reason, where)` for a row or file they leave out.
The engine records both under their reason (docs/data_real.md), so one bad input is
one skip, never the end of a conversion.
"""

from __future__ import annotations

import dataclasses


class Skip(Exception):
  """An input that is left out of the output, recorded under `reason`."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A listed row or file that is left out: why, and where (file, `file:line`, key)."""
  reason: str
  where: str
