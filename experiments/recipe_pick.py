"""The recipe with the lowest held-out ε-MSE (EMA or raw weights, the better) at the largest GPU-time all reached.

Part of experiments/recipe_race.sh: reads /tmp/solo.json (each run's metrics lines written while it ran alone)
and runs/NAME/metrics.jsonl; prints a JSON summary, then the winner's name.
"""
import json
import sys

import numpy as np

solo = json.load(open("/tmp/solo.json"))
res = {}
for name in sys.argv[1:]:
    try:
        rows = [json.loads(l) for l in open(f"runs/{name}/metrics.jsonl") if l.strip()]
    except OSError:
        continue
    a, b = solo[name]
    logs = [r for r in rows[a:b] if r.get("images_per_s")][1:]  # the first may span the switch
    evals = [r for r in rows if "held_out_mse" in r]
    if not logs or not evals or not all(np.isfinite(r["held_out_mse_ema"]) for r in evals):
        print(f"{name}: no solo throughput or evaluations; left out", file=sys.stderr)
        continue
    ips = float(np.median([r["images_per_s"] for r in logs]))
    res[name] = {"solo_images_per_s": ips, "solo_windows": len(logs), "last": evals[-1]}
    res[name]["x"] = [r["images_seen"] / ips / 60 for r in evals]
    res[name]["y"] = [min(r["held_out_mse_ema"], r["held_out_mse"]) for r in evals]
common = min(v["x"][-1] for v in res.values())
for v in res.values():
    v["best_at_common_gpu_min"] = float(np.interp(common, v["x"], v["y"]))
    del v["x"], v["y"]
winner = min(res, key=lambda n: res[n]["best_at_common_gpu_min"])
print(json.dumps({"common_gpu_minutes": common, "runs": res}, indent=1))
print(winner)
