"""Done markers for the exploratory study's 50 committed cells (docs/study/default_simple/
results.jsonl, the 2026-12-01 run), so the report pools them with the new aioli/unimax
cells under --pool_mixed. A marker is only written for a cell that has none."""
import collections
import json
import os
import sys

src, out_dir = sys.argv[1], sys.argv[2]
by_cell = collections.defaultdict(list)
for line in open(src):
  if line.strip():
    row = json.loads(line)
    by_cell[row["cell"]].append(row)
n = 0
for cell, rows in sorted(by_cell.items()):
  d = os.path.join(out_dir, "cells", cell)
  if os.path.exists(os.path.join(d, "done.json")):
    continue
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "done.json"), "w") as f:
    json.dump({"cell": cell, "rows": rows, "restored_from": src,
               "pretrain_loss": rows[0].get("pretrain_loss")}, f, sort_keys=True)
  n += 1
print(f"restored {n} cells from {src}")
