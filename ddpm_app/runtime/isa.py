"""What this CPU can do for inference: its model name and the instruction sets that decide the fast path.

Three of them matter here. AVX2 is the x86-64 baseline of the last decade. AVX-512 doubles the vector width,
and AVX512-BF16 adds bfloat16 dot products, so bf16 convolutions run at about twice the fp32 rate. AMX (Intel
Xeon since Sapphire Rapids) adds tile matrix units that multiply bf16 several times faster again. oneDNN, which
runs PyTorch's CPU convolutions, picks its kernels from the same flags.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's name and the extensions that choose the inference path (see :func:`detect`)."""

    model: str  # e.g. "AMD EPYC", "Intel(R) Xeon(R) Platinum 8481C"
    avx2: bool
    avx512: bool
    avx512_bf16: bool
    amx: bool  # AMX tiles with bf16 (Intel Xeon since Sapphire Rapids)

    @property
    def isa(self) -> str:
        """The widest of AMX / AVX-512 / AVX2 this CPU has, as a short label (e.g. "AVX-512 + AVX512-BF16")."""
        if self.amx:
            return "AMX + AVX-512"
        if self.avx512:
            return "AVX-512 + AVX512-BF16" if self.avx512_bf16 else "AVX-512"
        return "AVX2" if self.avx2 else "no AVX2"

    @property
    def bf16_native(self) -> bool:
        """Whether bfloat16 matrix arithmetic runs in hardware (AMX or AVX512-BF16), not emulated in fp32."""
        return self.amx or self.avx512_bf16

    def describe(self) -> str:
        return f"{self.model} ({self.isa})"


def cpu_model_name() -> str:
    """The CPU's marketing name, from /proc/cpuinfo on Linux, else what the platform module reports."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def detect() -> CpuFeatures:
    """This machine's :class:`CpuFeatures`, as PyTorch's own CPU probe (cpuinfo) sees them."""
    cpu = torch.cpu
    return CpuFeatures(model=cpu_model_name(), avx2=cpu._is_avx2_supported(), avx512=cpu._is_avx512_supported(),
                       avx512_bf16=cpu._is_avx512_bf16_supported(), amx=cpu._is_amx_tile_supported())
