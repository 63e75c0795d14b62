"""The CPU side of the precision rule: bf16 autocast where the CPU multiplies bf16 natively."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinossl.errors import DinoError
from dinossl.runtime import precision
from dinossl.runtime.precision import cpu_flags, has_native_bf16, resolve_precision

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f {extra}
bogomips\t: 5192.24

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f {extra}
"""


def test_cpu_flags_of_the_first_processor(tmp_path: Path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra="avx512_bf16"))
    assert cpu_flags(path) == frozenset({"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("extra, native", [("avx512_bf16", True), ("amx_tile amx_bf16", True), ("avx512_vnni", False)])
def test_auto_is_bf16_exactly_on_cpus_with_native_bf16(tmp_path: Path, monkeypatch, extra, native):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra=extra))
    monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(path))
    precision.cpu_has_native_bf16.cache_clear()
    try:
        cpu = torch.device("cpu")
        assert has_native_bf16(cpu) is (native and torch.backends.mkldnn.is_available())
        assert resolve_precision("auto", cpu) == (torch.bfloat16 if has_native_bf16(cpu) else None)
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_explicit_names_on_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(DinoError, match="fp16 needs a CUDA or Apple-silicon"):
        resolve_precision("fp16", cpu)
    with pytest.raises(DinoError, match="precision must be one of"):
        resolve_precision("fp8", cpu)
