"""Measure a model: bits/dim, FD-UTK, memorisation and a sample grid (:mod:`ddpm_app.metrics.evaluate`).

    python -m ddpm_app.cli.evaluate MODEL_DIR --data PACK.zip [--split test] [--num-samples N] [--sampler ddpm|ddim --steps K]

writes ``eval.json``, ``samples_<sampler>.png`` (8×8) and ``memorisation.png`` into ``--out`` (default
``MODEL_DIR/eval``) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time

from ddpm_app.cli.options import add_dataclass_options, pick
from ddpm_app.io.data import DatasetError
from ddpm_app.io.model_folder import ModelFolderError
from ddpm_app.metrics.evaluate import EvalConfig, evaluate, format_table


class _Printer:
    """Progress lines on stderr, at most one per stage every few seconds."""

    def __init__(self, every: float = 10.0):
        self.every, self.last, self.start = every, {}, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        self.start.setdefault(stage, now)
        if done < total and now - self.last.get(stage, 0.0) < self.every:
            return
        self.last[stage] = now
        elapsed = now - self.start[stage]
        eta = elapsed / done * (total - done) if done else 0.0
        print(f"{stage}: {done}/{total}  {elapsed:.0f} s elapsed, ~{eta:.0f} s left", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm_app.cli.evaluate",
                                     description="Measure a model: bits/dim, FD-UTK, memorisation, sample grid.")
    parser.add_argument("model", help="model folder (config.json + model.safetensors) or Hub repo id")
    parser.add_argument("--data", required=True, help="data pack (zip or folder) with train/ and test/ folders")
    parser.add_argument("--out", default=None, help="output folder (default: MODEL_DIR/eval)")
    add_dataclass_options(parser, EvalConfig)
    args = parser.parse_args(argv)
    try:
        config = EvalConfig(**pick(args, EvalConfig))
        result = evaluate(args.model, args.data, config, out_dir=args.out, progress=_Printer())
    except (ModelFolderError, DatasetError, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
