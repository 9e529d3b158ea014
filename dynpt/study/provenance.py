"""What code and configuration a study's results came from.

Every results.jsonl row names its code (the git commit of the tree the study
ran from, and whether that tree had uncommitted changes) and a fingerprint of
the contents of the gin files the study read (the study files and every
pretraining and finetuning file, with the files they include), so a report
can refuse to pool rows that different code or configuration produced.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import subprocess
from typing import Any, Iterable, Mapping, Sequence

UNKNOWN = "unknown"
KEYS = ("commit", "dirty", "gin_fingerprint")  # What a row says of its code and configs.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN_DIR = os.path.join(REPO_ROOT, "gin_configs")  # Where `study/default.gin` is found.
_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.MULTILINE)


def code_version(repo_root: str) -> dict[str, Any]:
  """{'commit': HEAD's hash, 'dirty': tracked files differ from it} of `repo_root`.

  Untracked files are not counted (the study reads only tracked code and
  configs). Outside a git checkout both are 'unknown'.
  """
  def git(*args: str) -> str:
    return subprocess.run(["git", "-C", repo_root, *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout

  try:
    commit = git("rev-parse", "HEAD").strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
  except (OSError, subprocess.SubprocessError):
    return {"commit": UNKNOWN, "dirty": UNKNOWN}
  return {"commit": commit, "dirty": dirty}


def resolve_gin_file(path: str, search_paths: Sequence[str]) -> str:
  """`path` as given, else under the first search path that has it; FileNotFoundError."""
  if os.path.exists(path):
    return os.path.abspath(path)
  for root in search_paths:
    candidate = os.path.join(root, path)
    if os.path.exists(candidate):
      return os.path.abspath(candidate)
  raise FileNotFoundError(f"gin file {path} is not in {', '.join(search_paths) or '.'}")


def gin_files_closure(paths: Iterable[str], search_paths: Sequence[str]) -> list[str]:
  """Absolute paths of `paths` and of every file they `include`, transitively, in order."""
  seen: list[str] = []
  todo = list(paths)
  while todo:
    path = resolve_gin_file(todo.pop(0), search_paths)
    if path in seen:
      continue
    seen.append(path)
    with open(path) as f:
      todo.extend(_INCLUDE.findall(f.read()))
  return seen


def gin_fingerprint(paths: Iterable[str], search_paths: Sequence[str]) -> str:
  """A digest of the contents of the gin files `paths` and their includes.

  Files are keyed by their path relative to the search path that holds them,
  so two checkouts of the same configs agree.
  """
  digest = hashlib.sha256()
  for path in sorted(gin_files_closure(paths, search_paths)):
    name = path
    for root in search_paths:
      root = os.path.abspath(root)
      if path.startswith(root + os.sep):
        name = os.path.relpath(path, root)
        break
    with open(path, "rb") as f:
      digest.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
  return digest.hexdigest()[:16]


def of_gin_files(paths: Iterable[str]) -> dict[str, Any]:
  """The commit this checkout is at (and whether it is dirty) and the fingerprint of
  the gin files `paths` (as given, else under `gin_configs/`) and their includes.

  Raises:
    FileNotFoundError: naming a gin file that is not there.
  """
  return {**code_version(REPO_ROOT), "gin_fingerprint": gin_fingerprint(paths, [GIN_DIR])}


def code_versions(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, ...], int]:
  """(commit, dirty, gin fingerprint) -> rows; 'unrecorded' where a row has none."""
  out: dict[tuple[str, ...], int] = collections.Counter()
  for r in rows:
    out[tuple(str(r.get(k, "unrecorded")) for k in KEYS)] += 1
  return dict(out)
