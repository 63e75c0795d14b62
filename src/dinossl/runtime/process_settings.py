"""The process-wide settings a training run applies before it builds anything: the CUDA
switches (TF32 for fp32 runs only), the host allocator and torch's CPU threads. The
benchmarks that time the training step apply them through the same function."""

from __future__ import annotations

import torch

from dinossl.config import TrainConfig
from dinossl.runtime.cuda_settings import configure_cuda
from dinossl.runtime.host_memory import configure_host_allocator
from dinossl.runtime.precision import resolve_precision


def apply_process_settings(train: TrainConfig, device: torch.device) -> bool:
    """Apply ``train``'s process settings for a run on ``device``: cuDNN autotuning and TF32
    (``train.tf32``) for fp32 runs only, since mixed-precision runs keep their float32 parts
    (the head's last layer, the loss) in IEEE float32; ``train.host_allocator``;
    ``train.threads`` when positive. Returns whether freed host memory is now retained."""
    configure_cuda(device, tf32=train.tf32 and resolve_precision(train.precision, device) is None)
    retained = configure_host_allocator(train.host_allocator, device)
    if train.threads > 0:
        torch.set_num_threads(train.threads)
    return retained
