"""Which CPU kernels make the reverse step fastest on this machine: the 1×1 convolutions as oneDNN convolutions or
as oneDNN matrix products, and each GroupNorm as PyTorch's kernel or the kernel timed fastest for its shape
(``ddpm_app.cpu_norm``), in fp32 and bf16.

    python benchmarks/cpu_variants.py [--threads 2] [--repeats 30] [--batches 1,4] [--model weights/faces] [--ops]

Prints the CPU (model, ISA, which logical CPUs this process may use and whether any two are one core's hyper-
threads), then the median ms per network evaluation of each variant, interleaved (ABAB…); the app's networks are
the "1x1=matmul gn=tuned" rows. With ``--ops``, per-call medians of each GroupNorm kernel and each 1×1 form for
the network's shapes at each batch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app import cpu_norm, onednn  # noqa: E402
from ddpm_app.inference import Prepared, cpu_bf16_supported, example_input, median_ms  # noqa: E402
from ddpm_app.isa import detect  # noqa: E402
from ddpm_app.model_folder import load_pretrained  # noqa: E402

VARIANTS = [(dtype, pointwise, norm) for dtype in ("fp32", "bf16") for pointwise in ("conv", "matmul")
            for norm in ("native", "tuned")]


def siblings() -> str:
    cpus = sorted(os.sched_getaffinity(0))
    cores = {}
    for c in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        cores.setdefault(path.read_text().strip() if path.exists() else str(c), []).append(c)
    shared = [v for v in cores.values() if len(v) > 1]
    return f"logical CPUs {cpus}; {len(cores)} physical cores" + (f", hyperthread pairs {shared}" if shared else "")


def shapes(model, batch):
    """(GroupNorm input shapes, 1×1 conv input shapes with their out-channels) the model sees at ``batch``."""
    example = example_input(model, batch)
    modules = dict(model.named_modules())
    norms = {(tuple(x.shape), modules[name].num_groups)
             for name, x in onednn.first_inputs(model, example, torch.nn.GroupNorm).items()}
    points = {(tuple(x.shape), modules[name].out_channels)
              for name, x in onednn.first_inputs(model, example, torch.nn.Conv2d).items()
              if modules[name].kernel_size == (1, 1)}
    return sorted(norms), sorted(points)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--model", default="weights/faces")
    p.add_argument("--ops", action="store_true", help="also time single ops")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = detect()
    print(f"CPU: {cpu.model} ({cpu.isa}); {siblings()}; {args.threads} threads; torch {torch.__version__}")
    model = load_pretrained(args.model).model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    example = example_input(model, 1)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    variants = [v for v in VARIANTS if v[0] == "fp32" or cpu_bf16_supported(cpu)]
    batches = [int(b) for b in args.batches.split(",")]

    def network(dtype: str, pointwise: str, norm: str) -> Prepared:
        net = onednn.pack_convolutions(model, example, dtypes[dtype], pointwise_as_matmul=pointwise == "matmul")
        if norm == "tuned":
            net = cpu_norm.tune_group_norms(net, {b: example_input(model, b) for b in batches},
                                            lambda calls: median_ms(calls, (), rounds=5, warmup=1))
        return Prepared(net, channels_last=True)

    nets = {f"{d} 1x1={pw} gn={gn}": network(d, pw, gn) for d, pw, gn in variants}
    for batch in batches:
        tuned = nets[f"fp32 1x1=matmul gn=tuned"].model
        print(f"\nGroupNorm kernels chosen at batch {batch} (fp32 network): {cpu_norm.kernel_counts(tuned, batch)}")
    for batch in batches:
        ms = median_ms(nets, example_input(model, batch), rounds=args.repeats, warmup=2)
        base = ms["fp32 1x1=conv gn=native"]  # the packed fp32 network before these kernels
        print(f"\nbatch {batch}: ms per network evaluation (median of {args.repeats}, interleaved)")
        for name, v in ms.items():
            print(f"  {name:36s} {v:7.2f}  ({v / base:.2f}× packed fp32)")
        if not args.ops:
            continue
        norms, points = shapes(model, batch)
        print(f"  GroupNorm per call (µs): shape, each kernel of ddpm_app.cpu_norm")
        for shape, groups in norms:
            gn = cpu_norm.TunedGroupNorm(torch.nn.GroupNorm(groups, shape[1]))
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            cands = {k: (lambda y, k=k, gn=gn: gn.kernel(k, y)) for k in cpu_norm.KERNELS}
            t = median_ms(cands, (x,), rounds=args.repeats, warmup=3)
            print(f"    {str(shape):22s} " + "  ".join(f"{k} {v * 1000:7.0f}" for k, v in t.items()))
        print(f"  1x1 per call (µs): shape → out, conv / matmul in fp32 and bf16")
        for shape, out in points:
            conv = torch.nn.Conv2d(shape[1], out, 1)
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            cands = {}
            for d in dtypes if cpu_bf16_supported(cpu) else ["fp32"]:
                cands[f"conv {d}"] = onednn.PackedConv2d(conv, list(shape), dtypes[d])
                cands[f"matmul {d}"] = onednn.PackedPointwise(conv, dtypes[d], shape[0] * shape[2] * shape[3])
            t = median_ms(cands, (x,), rounds=args.repeats, warmup=3)
            print(f"    {str(shape):22s}→{out:4d} " + "  ".join(f"{k} {v * 1000:6.0f}" for k, v in t.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
