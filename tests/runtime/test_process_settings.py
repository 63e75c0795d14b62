import torch

from dinossl.config import load_config
from dinossl.runtime import process_settings
from dinossl.runtime.process_settings import apply_process_settings


def _train(*overrides: str):
    return load_config("vit-tiny-cifar", overrides=list(overrides)).train


def test_threads_and_allocator_reach_the_process(monkeypatch):
    """train.threads sets torch's CPU threads (0 leaves them); train.host_allocator is applied
    for the run's device and its answer returned."""
    allocator_calls, threads = [], []
    monkeypatch.setattr(process_settings, "configure_host_allocator",
                        lambda setting, device: allocator_calls.append((setting, device)) or setting == "retain")
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    cpu = torch.device("cpu")
    assert apply_process_settings(_train("train.threads=3", "train.host_allocator=retain"), cpu) is True
    assert apply_process_settings(_train("train.threads=0", "train.host_allocator=system"), cpu) is False
    assert threads == [3]
    assert allocator_calls == [("retain", cpu), ("system", cpu)]


def test_tf32_only_for_fp32_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(process_settings, "configure_cuda", lambda device, tf32: calls.append(tf32))
    monkeypatch.setattr(process_settings, "configure_host_allocator", lambda setting, device: False)
    for precision in ("fp32", "bf16"):
        apply_process_settings(_train(f"train.precision={precision}", "train.tf32=true"), torch.device("cpu"))
    assert calls == [True, False]
