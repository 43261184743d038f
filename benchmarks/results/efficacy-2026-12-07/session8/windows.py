"""Mean test figures of rounds 8-12 and 13-16 of main-job metrics.jsonl files: Dice on lesion
images (overall and per client), FP rate on lesion-free images, mean Dice.
usage: python windows.py NAME=metrics.jsonl ..."""
import json
import sys

import numpy as np

for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    rows = [json.loads(line) for line in open(path)]
    rows = {r["round"]: r for r in rows if "test_mean_dice_present" in r}
    out = [f"{name:10s}"]
    for lo, hi in ((8, 12), (13, 16)):
        rs = [rows[r] for r in range(lo, hi + 1) if r in rows]
        if not rs:
            continue
        les = np.mean([r["test_mean_dice_present"] for r in rs])
        per = np.mean([r["test_dice_present"] for r in rs], axis=0)
        fp = np.mean([r["test_mean_false_positive_rate"] for r in rs])
        fpc = np.mean([r["test_false_positive_rate"] for r in rs], axis=0)
        md = np.mean([r["test_mean_dice"] for r in rs])
        out.append(f"rounds {lo}-{max(r['round'] for r in rs)}: lesion {les:.3f} "
                   f"({' / '.join(f'{v:.2f}' for v in per)}) FP {fp:.2f} "
                   f"({' / '.join(f'{v:.2f}' for v in fpc)}) mean {md:.3f}")
    print("  ".join(out))
