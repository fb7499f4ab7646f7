"""Train the face-attribute CNN whose features define FD-UTK (:mod:`ddpm_app.metrics.features`) and record how:

    python -m ddpm_app.cli.features train --data utkface-64.zip --out ddpm_app/assets/face_features.safetensors

writes the weights and, beside them, a .json with the training settings, the data's checksum and the accuracy on the
pack's test/ split.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ddpm_app.cli.options import add_dataclass_options, pick
from ddpm_app.io.data import load_pack
from ddpm_app.metrics import features
from ddpm_app.metrics.features import (
    DEFAULT_WEIGHTS,
    FORMAT,
    HEADS,
    FaceNetConfig,
    FeatureTrainConfig,
    TrainProgress,
    attribute_accuracy,
    class_fractions,
    label_names,
    metadata_path,
    save_feature_net,
    sha256_file,
    train_feature_net,
)
from ddpm_app.runtime.inference import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm_app.cli.features",
                                     description=features.__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the face-attribute CNN on a UTKFace pack's train split")
    train.add_argument("--data", required=True, help="UTKFace pack (zip or folder with train/ and test/)")
    train.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="weights file to write (.safetensors); "
                       "a .json with its metadata and test accuracy is written next to it")
    train.add_argument("--limit", type=int, default=None, help="use only the first N training images (testing)")
    train.add_argument("--device", default="auto", help="torch device (default: auto = cuda if available, else cpu)")
    add_dataclass_options(train, FeatureTrainConfig)
    args = parser.parse_args(argv)

    config = FeatureTrainConfig(**pick(args, FeatureTrainConfig))
    net_config = FaceNetConfig()
    data = Path(args.data)
    t0 = time.perf_counter()
    pack = load_pack(data, net_config.image_size, split="train", limit=args.limit)
    labelled = label_names(pack.names)
    print(f"train: {len(labelled.indices)} labelled images ({len(pack) - len(labelled.indices)} malformed names "
          f"skipped, {len(pack.skipped)} unreadable) decoded in {time.perf_counter() - t0:.0f} s", flush=True)
    if len(labelled.indices) == 0:
        print(f"error: {data}: no file names carry UTKFace labels (AGE_GENDER_RACE_TIMESTAMP)", file=sys.stderr)
        return 2

    def report(p: TrainProgress) -> None:
        per_epoch = math.ceil(p.total_steps / config.epochs)
        if p.step % per_epoch == 0 or p.step == p.total_steps:
            print(f"epoch {p.epoch}/{config.epochs}  loss {p.loss:.4f}  {p.elapsed_s:.0f} s", flush=True)

    t1 = time.perf_counter()
    device = resolve_device(args.device)
    net = train_feature_net(pack.images[labelled.indices], labelled.labels, config, net_config, device, report)
    train_seconds = time.perf_counter() - t1
    out = save_feature_net(net.cpu(), args.out)

    accuracy: dict[str, float] | None = None
    test_count = 0
    try:
        test = load_pack(data, net_config.image_size, split="test")
    except ValueError:
        test = None
    if test is not None:
        test_labelled = label_names(test.names)
        test_count = len(test_labelled.indices)
        if test_count:
            accuracy = attribute_accuracy(net, test.images[test_labelled.indices], test_labelled.labels)
            print("test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()), flush=True)
    majority = None
    if test is not None and test_count:
        majority = {name: max(class_fractions(test_labelled.labels)[name]) for name in HEADS}
    meta = {
        "format": FORMAT,
        "what": "UTKFace attribute classifier; its penultimate (global-average-pooled) features define FD-UTK. "
                "Not comparable with Inception FID.",
        "file": out.name,
        "file_sha256": sha256_file(out),
        "net": asdict(net_config),
        "feature_dim": net_config.feature_dim,
        "heads": {k: list(v) for k, v in HEADS.items()},
        "training": {**asdict(config), "data": data.name, "data_sha256": sha256_file(data) if data.is_file() else None,
                     "train_images": len(labelled.indices), "limit": args.limit,
                     "train_seconds": round(train_seconds, 1), "device": str(device),
                     "torch": torch.__version__, "threads": torch.get_num_threads()},
        "test_images": test_count,
        "test_accuracy": accuracy,
        "test_majority_class_rate": majority,
        "license_note": "Trained on UTKFace, which is available for non-commercial research purposes only.",
    }
    metadata_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} and {metadata_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
