"""Record ε̂ of every shipped model (weights/*) on fixed inputs, for tests/models/test_shipped_models.py.

    python scripts/record_shipped_outputs.py        # writes tests/recorded/shipped_outputs.safetensors

The inputs are two 64×64 RGB noise images drawn from ``torch.Generator().manual_seed(0)`` and rounded to float16
(so they are stored exactly), at timesteps 50 and 600. Run it only after retraining a shipped model on purpose:
the test compares the current code's ε̂ with these recorded values, so a change of the U-Net's forward pass
shows up as a failure, while a change of the weights needs a new recording (and a look at the samples).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_app.io.loading import load_pretrained

OUT = ROOT / "tests" / "recorded" / "shipped_outputs.safetensors"
TIMESTEPS = (50, 600)


def fixed_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(x, t): x (2, 3, 64, 64) float16-exact noise from seed 0, t (2,) long."""
    x = torch.randn((len(TIMESTEPS), 3, 64, 64), generator=torch.Generator().manual_seed(0)).half()
    return x, torch.tensor(TIMESTEPS)


def main() -> None:
    x, t = fixed_inputs()
    tensors = {"x": x, "t": t}
    for folder in sorted(p for p in (ROOT / "weights").iterdir() if (p / "config.json").is_file()):
        loaded = load_pretrained(folder)
        with torch.no_grad():
            tensors[f"eps/{folder.name}"] = loaded.model(x.float(), t).contiguous()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata={"torch": torch.__version__,
                                           "recorded_with": "scripts/record_shipped_outputs.py"})
    print(f"wrote {OUT.relative_to(ROOT)}: {', '.join(sorted(tensors))}")


if __name__ == "__main__":
    main()
