"""Held-out ε-MSE curves of several runs, per image seen and per GPU-minute, from their metrics.jsonl files.

    python experiments/plot_held_out.py OUT.png LABEL=METRICS.jsonl:IMAGES_PER_S [...]

IMAGES_PER_S is the run's throughput measured alone on the GPU; images seen ÷ it gives its GPU-minutes.
Solid lines: EMA weights; dashed: the raw (trained) weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def held_out_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "held_out_mse" in r]


def main(argv: list[str]) -> int:
    out, runs = Path(argv[0]), argv[1:]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
    for spec in runs:
        label, rest = spec.split("=", 1)
        path, ips = rest.rsplit(":", 1)
        rows = held_out_rows(Path(path))
        images = [r["images_seen"] / 1e6 for r in rows]
        minutes = [r["images_seen"] / float(ips) / 60 for r in rows]
        for ax, x in zip(axes, (images, minutes)):
            line, = ax.plot(x, [r["held_out_mse_ema"] for r in rows], lw=1.5, label=f"{label} (EMA)")
            ax.plot(x, [r["held_out_mse"] for r in rows], lw=0.8, ls="--", color=line.get_color(),
                    label=f"{label} (raw)")
    axes[0].set(xlabel="images seen (millions)", ylabel="held-out ε-MSE per pixel", yscale="log", xscale="log")
    axes[1].set(xlabel="GPU-minutes (images ÷ the run's own images/s alone)", xscale="log")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7)
    fig.suptitle("seed U-Net on UTKFace 64×64: held-out ε-MSE (1,000 test images, fixed t and ε)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
