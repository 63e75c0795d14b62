import subprocess
import sys
import textwrap

import pytest
import torch

from dinossl.runtime.host_memory import configure_host_allocator, uses_glibc

# In a fresh interpreter: how many bytes glibc has mmapped (mallinfo2's hblkhd) while a 64 MiB
# tensor is alive, with or without retain_freed_memory() first.
PROBE = textwrap.dedent("""
    import ctypes, sys
    import torch
    from dinossl.runtime.host_memory import retain_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    applied = retain_freed_memory() if sys.argv[1] == "retain" else False
    before = libc.mallinfo2().hblkhd
    big = torch.ones(16 * 2**20)  # 64 MiB
    during = libc.mallinfo2().hblkhd
    del big
    print(int(applied), during - before)
""")


@pytest.mark.skipif(not uses_glibc(), reason="the allocator setting acts on glibc only")
def test_retained_memory_serves_large_tensors_from_the_heap_not_from_fresh_mappings():
    outputs = {}
    for mode in ("system", "retain"):
        result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        applied, mapped = map(int, result.stdout.split())
        outputs[mode] = (applied, mapped)
    assert outputs["system"] == (0, outputs["system"][1]) and outputs["system"][1] >= 64 * 2**20
    assert outputs["retain"] == (1, 0)


def test_only_cpu_runs_retain_under_auto_and_system_changes_nothing():
    assert configure_host_allocator("system", torch.device("cpu")) is False
    assert configure_host_allocator("auto", torch.device("cuda", 0)) is False


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="unknown host allocator 'tcmalloc'"):
        configure_host_allocator("tcmalloc", torch.device("cpu"))
