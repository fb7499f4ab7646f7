"""Convolutions whose weights are reordered once for oneDNN, the library behind PyTorch's fast CPU convolutions.

PyTorch sends an fp32 CPU convolution to oneDNN only when it guesses oneDNN will be faster
(``ConvParams::use_mkldnn`` in ATen's Convolution.cpp: batch > 1, groups > 1, a kernel larger than 3×3, or an
input of more than 20,480 values). The rest, which at batch 1 is most of a 64×64 U-Net's deeper levels, take the
im2col + GEMM "slow" path. Where oneDNN does run, every call first reorders the weights into oneDNN's blocked
layout. At batch 1 that reorder and the slow path cost more than the arithmetic.

:func:`pack_convolutions` swaps every ``nn.Conv2d`` of a network, for inference only, for a :class:`PackedConv2d`
that keeps its weights in oneDNN's layout and calls oneDNN's convolution directly. This is the op PyTorch's
compiler (inductor with ``freezing``) emits for a frozen CPU convolution. 1×1 convolutions become oneDNN matrix
products over the pixels instead (:class:`PackedPointwise`), again with packed weights, as the compiler does for a
linear layer. The function computed is the same, to float rounding.

Packed in bf16, a convolution computes in bf16 and hands back its input's dtype, so the rest of the network (the
GroupNorms, attention, the residual sums) stays float32. On the CPU those run slower in bf16 than in fp32 (measured
on an AVX512-BF16 CPU: GroupNorm on channels_last bf16 up to 24× slower, attention 1.7× at batch 4), and keeping
them float32 also makes ε̂ closer to the fp32 network's.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def available() -> bool:
    """Whether this PyTorch build has oneDNN and the ops used here (all internal to PyTorch)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and all(
        hasattr(ops, op) for op in ("_reorder_convolution_weight", "_convolution_pointwise", "_reorder_linear_weight",
                                    "_linear_pointwise")))


def bf16_available() -> bool:
    """Whether oneDNN will run bf16 here: :func:`available`, and its own check, which also follows a limit set with
    ``ONEDNN_MAX_CPU_ISA`` (with ``AVX2``, packing bf16 weights fails although the CPU has AVX512-BF16)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return available() and check is not None and bool(check())


class PackedConv2d(nn.Module):
    """``conv(x)`` through oneDNN with the weights reordered once, for the input size seen when packing.

    Inputs of other sizes (another batch) work as fast. It computes in ``dtype`` and returns the input's dtype,
    channels_last for a channels_last input.
    """

    def __init__(self, conv: nn.Conv2d, input_size: list[int], dtype: torch.dtype = torch.float32):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only zero padding given as numbers can be packed")
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups, self.dtype = list(conv.dilation), conv.groups, dtype
        weight = conv.weight.detach().to(dtype).contiguous()
        # a opaque oneDNN tensor: a plain attribute, so state_dict() and .to() leave it alone
        self.packed_weight = torch.ops.mkldnn._reorder_convolution_weight(
            weight, self.padding, self.stride, self.dilation, self.groups, input_size)
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.shape = tuple(conv.weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.mkldnn._convolution_pointwise(x.to(self.dtype), self.packed_weight, self.bias, self.padding,
                                                    self.stride, self.dilation, self.groups, "none", [], "")
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.shape}, stride={self.stride}, padding={self.padding}, groups={self.groups}, {self.dtype}"


class PackedPointwise(nn.Module):
    """A 1×1 convolution as one matrix product over the pixels, ``(N·H·W, C_in) @ Wᵀ``, through oneDNN's matmul with
    the weights reordered once for ``rows`` rows (other row counts work as fast).

    On a channels_last input the pixel rows are a view, no copy. The same function as the convolution, to float
    rounding; returns the input's dtype, channels_last. Why: on an Intel Xeon with AMX (PyTorch 2.11, 2 threads)
    oneDNN ran the bf16 1×1 convolutions of a batch of 4 on 4×4 and 8×8 maps at 2–5 ms a call, where this
    matrix product takes 0.1 ms; elsewhere the two are level (see benchmarks/cpu_variants.py).
    """

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype = torch.float32, rows: int = 16):
        super().__init__()
        if not is_pointwise(conv):
            raise ValueError("only a plain 1×1 convolution is a matrix product over pixels")
        self.dtype = dtype
        weight = conv.weight.detach()[:, :, 0, 0].to(dtype).contiguous()  # (C_out, C_in)
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)  # opaque, like PackedConv2d's
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.shape = tuple(conv.weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        pixels = x.permute(0, 2, 3, 1).to(self.dtype)  # (N, H, W, C_in)
        y = torch.ops.mkldnn._linear_pointwise(pixels, self.packed_weight, self.bias, "none", [], "")
        return y.permute(0, 3, 1, 2).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.shape}, {self.dtype}, as a matrix product"


def is_pointwise(conv: nn.Conv2d) -> bool:
    """A 1×1 convolution with stride 1, no padding and no groups: a matrix product over the pixels."""
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and conv.padding in ((0, 0), 0) and conv.padding_mode == "zeros")


def first_inputs(model: nn.Module, example: tuple[Tensor, ...], kind: type[nn.Module]) -> dict[str, Tensor]:
    """The input each submodule of type ``kind`` (by name) is first called with when ``model`` runs on ``example``."""
    inputs: dict[str, Tensor] = {}

    def record(name: str, args: tuple[Tensor, ...]) -> None:  # a pre-hook that returns None keeps the inputs
        inputs.setdefault(name, args[0])

    hooks = [module.register_forward_pre_hook(lambda _, args, name=name: record(name, args))
             for name, module in model.named_modules() if isinstance(module, kind)]
    try:
        with torch.inference_mode():
            model(*example)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def pack_convolutions(model: nn.Module, example: tuple[Tensor, ...], dtype: torch.dtype = torch.float32,
                      pointwise_as_matmul: bool = True) -> nn.Module:
    """A copy of ``model`` (on the CPU, in eval mode) with every Conv2d it calls on ``example`` packed for oneDNN:
    1×1 convolutions as :class:`PackedPointwise` matrix products (unless ``pointwise_as_matmul`` is False), the
    others as :class:`PackedConv2d`.

    ``model`` itself is not changed. The copy is for inference only: packed weights carry no gradient.
    """
    if not available():
        raise RuntimeError("this PyTorch build has no oneDNN convolution ops; use the network unpacked")
    model = copy.deepcopy(model).eval()
    for name, x in first_inputs(model, example, nn.Conv2d).items():
        size = list(x.shape)
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        conv = getattr(owner, leaf)
        if pointwise_as_matmul and is_pointwise(conv):
            setattr(owner, leaf, PackedPointwise(conv, dtype, rows=size[0] * size[2] * size[3]))
        else:
            setattr(owner, leaf, PackedConv2d(conv, size, dtype))
    return model
