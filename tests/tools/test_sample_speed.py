"""The speed benchmark says which machine its figures belong to: CPU model, instruction sets, threads, precision."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ddpm_app.runtime import openvino_net
from ddpm_app.runtime.inference import Runtime
from ddpm_app.runtime.isa import CpuFeatures, detect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sample_speed", ROOT / "benchmarks" / "sample_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_header_names_the_cpu_its_instruction_sets_threads_and_precision(bench):
    xeon = CpuFeatures("Intel(R) Xeon(R) Platinum 8481C", avx2=True, avx512=True, avx512_bf16=True, amx=True)
    runtime = Runtime("cpu", "bf16", False, "auto: OpenVINO with bf16 in hardware")
    lines = bench.header(xeon, 2, runtime)
    assert lines[0] == "CPU: Intel(R) Xeon(R) Platinum 8481C"
    assert lines[1].startswith("ISA: AMX + AVX-512 (") and "AMX yes" in lines[1] and "AVX2 yes" in lines[1]
    assert lines[2].startswith("Threads: 2 ")
    assert lines[3] == "Precision: bf16 (auto: OpenVINO with bf16 in hardware)" and len(lines) == 4
    openvino = Runtime("cpu", "bf16", False, "auto: OpenVINO", engine="OpenVINO 2026.4.1 (bf16)")
    assert bench.header(xeon, 2, openvino)[4] == "Runtime: OpenVINO 2026.4.1 (bf16)"
    avx2 = CpuFeatures("AMD Ryzen 5 3600", avx2=True, avx512=False, avx512_bf16=False, amx=False)
    assert bench.header(avx2, 4, runtime)[1] == "ISA: AVX2 (AVX2 yes, AVX-512 no, AVX512-BF16 no, AMX no)"


def test_benchmark_prints_this_machines_header_and_a_row_per_batch(bench, tiny_model_dir, capsys):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--weights", str(tiny_model_dir.parent), "--threads", "1", "--repeats", "1",
                           "--batches", "1,2", "--no-seed", "--precision", "fp32"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()
    cpu = detect()
    assert out[0] == f"CPU: {cpu.model}"
    assert out[1].startswith(f"ISA: {cpu.isa} (") and f"AMX {'yes' if cpu.amx else 'no'}" in out[1]
    assert out[2].startswith("Threads: 1 ")
    assert out[3].startswith("Precision: fp32 (")
    rows = [line for line in out if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    table_head = next(line for line in out if line.startswith("| batch |"))
    openvino = " | OpenVINO f32" if openvino_net.version() else ""
    openvino += " | OpenVINO bf16" if openvino and cpu.bf16_native else ""
    assert table_head == f"| batch | PyTorch fp32{openvino} | app: DDPM-1000 | app: DDIM-50 |"
