"""Mean test figures over round windows of main-job metrics.jsonl files, and the figures at the
best-validation round. usage: python win2.py NAME=metrics.jsonl:LO-HI,LO-HI ..."""
import json
import sys

import numpy as np

for arg in sys.argv[1:]:
    name, rest = arg.split("=", 1)
    path, wins = rest.split(":")
    rows = {r["round"]: r for r in map(json.loads, open(path)) if "test_mean_dice_present" in r}
    out = [f"{name:10s}"]
    for w in wins.split(","):
        lo, hi = map(int, w.split("-"))
        rs = [rows[r] for r in range(lo, hi + 1) if r in rows]
        les = np.mean([r["test_mean_dice_present"] for r in rs])
        fp = np.mean([r["test_mean_false_positive_rate"] for r in rs])
        fpc = np.mean([r["test_false_positive_rate"] for r in rs], axis=0)
        out.append(f"rounds {lo}-{hi}: lesion {les:.3f} FP {fp:.2f} "
                   f"({' / '.join(f'{v:.2f}' for v in fpc)})")
    best = max(rows.values(), key=lambda r: r["val_mean_dice"])
    out.append(f"best val round {best['round']}: lesion {best['test_mean_dice_present']:.3f} "
               f"FP {best['test_mean_false_positive_rate']:.2f}")
    print("  ".join(out))
