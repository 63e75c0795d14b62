"""The reference's DINO training step and the package's, timed side by side; writes JSON.

The reference (facebookresearch/dino) is imported from REFERENCE_SRC_DIR, a clone you give
(never copied into this repository); its own ``main_dino.train_one_epoch`` runs its step:
teacher and student forward, ``DINOLoss``, backward, ``utils.clip_gradients``, the last-layer
freeze, AdamW, the EMA, with its DDP wrapper on a one-process group, as ``main_dino.py`` runs
on one device. The package's step is ``Distiller.step``. Both start from the same weights (the
package's initialisation, loaded into the reference's modules), take the same synthetic crops
and the same lr, weight decay, momentum and temperature, on the same device, in one run; each
is measured in a fresh child process so that its peak memory is its own.

Before timing, a sanity check runs both for two steps in fp32 with drop-path off and compares
their losses (the first on identical weights, the second after one update) and, for the
package's timed precision, the first loss too.

Timing: ``--warmup`` steps (untimed; the first holds any compilation), then ``--steps`` timed
steps; images/s = steps x batch / elapsed. The reference synchronises with the host every step
(its ``loss.item()`` and ``torch.cuda.synchronize()``); the package only once at the end of
the timed steps, as its training loop does. Memory: on a GPU the peak of
``torch.cuda.max_memory_allocated`` over the steps; on the CPU the process's peak resident
set size and its growth from before the first step (``step_memory_mb``).

Process settings: the package's child applies those of a real run through the function
``build_run`` calls (``dinossl.runtime.process_settings``): on a GPU cuDNN autotuning and TF32
for fp32 (``train.tf32``), and the host allocator ``train.host_allocator`` (``auto``: glibc
keeps freed memory for reuse on CPU runs); the reference runs with the C
library's defaults, and with ``--reference-allocators system,retain`` a second time with the
package's setting, so the ratio is also given like for like (``images_per_s_over_reference_retain``).

Precision: the reference has fp32 and, on a GPU, fp16 autocast with a gradient scaler (its
``--use_fp16``, on by default); ``--reference-precision`` picks (default: fp16 on a GPU, fp32
on the CPU). ``--precision`` sets the package's base precision.

Levers (``--levers``): variants of the package measured in the same run, each the base plus
one setting: bf16, fp16, compile, pack_crops, activation_checkpointing, for_loop_optimizer
(``optim.implementation=for_loop`` instead of the fused default), foreach_optimizer,
system_allocator (``train.host_allocator=system``). Extra
``KEY=VALUE`` arguments change the base package's settings.

    python benchmarks/compare_reference.py ../dino-reference --out compare-cpu.json
    python benchmarks/compare_reference.py ../dino-reference --levers bf16,pack_crops,compile \\
        --out compare-levers-cpu.json
    python benchmarks/compare_reference.py ../dino-reference --setting gpu --precision bf16 \\
        --levers compile,pack_crops,activation_checkpointing --out compare-gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import subprocess
import sys
import time
import warnings
from argparse import Namespace
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, peak_memory, reset_peak_memory, synchronize  # noqa: E402

# --setting: a CPU configuration (ViT-Ti/16, batch 16) and the paper's GPU one (ViT-S/16, batch 64 per GPU).
SETTINGS: dict[str, dict[str, Any]] = {
    "cpu": dict(arch="vit_tiny", patch_size=16, depth=12, global_size=224, local_size=96, num_local=8, batch=16,
                out_dim=65536, hidden_dim=2048, bottleneck_dim=256),
    "gpu": dict(arch="vit_small", patch_size=16, depth=12, global_size=224, local_size=96, num_local=10, batch=64,
                out_dim=65536, hidden_dim=2048, bottleneck_dim=256),
}
VIT_SIZES = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}
LEVERS: dict[str, list[str]] = {
    "bf16": ["train.precision=bf16"],
    "fp16": ["train.precision=fp16"],
    "fp32": ["train.precision=fp32"],
    "compile": ["train.compile=true"],
    "pack_crops": ["train.pack_crops=true"],
    "activation_checkpointing": ["train.activation_checkpointing=true"],
    "for_loop_optimizer": ["optim.implementation=for_loop"],
    "foreach_optimizer": ["optim.implementation=foreach"],
    "system_allocator": ["train.host_allocator=system"],
}
# The step's scheduled values (the reference's defaults at a mid-training iteration).
BASE_LR, WEIGHT_DECAY, MOMENTUM, TEACHER_TEMP, STUDENT_TEMP, CLIP_GRAD = 5e-4, 0.04, 0.996, 0.04, 0.1, 3.0


@dataclass(frozen=True)
class Spec:
    """One measured configuration."""

    arch: str
    patch_size: int
    depth: int
    global_size: int
    local_size: int
    num_local: int
    batch: int
    out_dim: int
    hidden_dim: int
    bottleneck_dim: int
    drop_path: float
    device: str
    threads: int
    steps: int
    warmup: int
    seed: int

    @property
    def crops(self) -> str:
        return f"2x{self.global_size}+{self.num_local}x{self.local_size}"

    @property
    def lr(self) -> float:
        return BASE_LR * self.batch / 256.0


# --------------------------------------------------------------------------------------------
# Shared by both sides
# --------------------------------------------------------------------------------------------


def _setup(spec: Spec) -> torch.device:
    warnings.filterwarnings("ignore", category=FutureWarning)  # the reference's torch.cuda.amp
    warnings.filterwarnings("ignore", category=UserWarning)
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def make_crops(spec: Spec, device: torch.device) -> list[torch.Tensor]:
    """The same synthetic crops on every side: 2 global + num_local local views (B, 3, S, S)."""
    generator = torch.Generator().manual_seed(spec.seed)
    sizes = [spec.global_size] * 2 + [spec.local_size] * spec.num_local
    return [torch.randn(spec.batch, 3, s, s, generator=generator).to(device) for s in sizes]


def package_config(spec: Spec, overrides: list[str]):
    from dinossl.config import load_config

    return load_config("vit-small-imagenet", overrides=[
        f"model.arch={spec.arch}", f"model.patch_size={spec.patch_size}", "model.img_size=224",
        f"model.depth={spec.depth}", f"model.drop_path={spec.drop_path}", f"model.out_dim={spec.out_dim}",
        f"model.head_hidden_dim={spec.hidden_dim}", f"model.head_bottleneck_dim={spec.bottleneck_dim}",
        "model.use_bn_in_head=false", "model.norm_last_layer=true",
        f"data.crops.global_size={spec.global_size}", f"data.crops.local_size={spec.local_size}",
        f"data.crops.num_local={spec.num_local}", f"train.batch_size_per_process={spec.batch}",
        f"loss.student_temp={STUDENT_TEMP}", f"optim.clip_grad={CLIP_GRAD}", "optim.optimizer=adamw",
        f"train.device={spec.device}", f"train.seed={spec.seed}", "train.precision=fp32", *overrides,
    ])


def initial_student_state(spec: Spec, overrides: list[str]) -> dict[str, torch.Tensor]:
    """The package's initial student weights for ``train.seed``, seeded as ``build_distiller``
    seeds them; the student alone, so that the reference's process holds no second network."""
    from dinossl.models import build_network

    config = package_config(spec, overrides)
    torch.manual_seed(config.train.seed)
    return build_network(config.model, student=True).state_dict()


def _drop_path_off(module: torch.nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0


def _memory(device: torch.device, baseline_mb: float) -> dict[str, Any]:
    """The peak since ``reset_peak_memory`` returned ``baseline_mb``; on the CPU also its growth."""
    memory = {**peak_memory(device), "before_steps_mb": baseline_mb}
    if device.type != "cuda":
        memory["step_memory_mb"] = memory["peak_memory_mb"] - baseline_mb
    return memory


def _timing(spec: Spec, warmup_s: list[float], elapsed: float, step_s: Optional[list[float]] = None) -> dict[str, Any]:
    result = {"images_per_s": spec.steps * spec.batch / elapsed, "mean_step_s": elapsed / spec.steps,
              "warmup_steps_s": warmup_s, "timed_steps": spec.steps}
    if step_s:
        result["median_step_s"] = statistics.median(step_s)
    return result


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reference_on_cpu(device: torch.device, ref_utils: Any) -> Iterator[None]:
    """The reference's loop calls ``.cuda()`` on the crops and ``torch.cuda.synchronize()`` every
    step, and its metric logger averages over processes with a CUDA tensor after the epoch; on
    a CPU these become no-ops (the crops are already where they compute; one process)."""
    if device.type == "cuda":
        yield
        return
    saved = torch.Tensor.cuda, torch.cuda.synchronize, ref_utils.SmoothedValue.synchronize_between_processes
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]
    ref_utils.SmoothedValue.synchronize_between_processes = lambda self: None
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.cuda.synchronize, ref_utils.SmoothedValue.synchronize_between_processes = saved


class FixedBatches:
    """The reference's data loader stand-in: the same crops ``count`` times; the time of each
    ``next`` is recorded, so the gaps between them are the reference's iterations."""

    def __init__(self, crops: list[torch.Tensor], count: int) -> None:
        self.crops, self.count, self.stamps = crops, count, []
        self.labels = torch.zeros(crops[0].shape[0], dtype=torch.long)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for _ in range(self.count):
            self.stamps.append(time.perf_counter())
            yield self.crops, self.labels


class RecordingLoss(torch.nn.Module):
    """The reference's DINOLoss, recording each loss it returns (sanity check only)."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss, self.values = loss, []

    def forward(self, *args):
        value = self.loss(*args)
        self.values.append(value.detach().float().item())
        return value


class Reference:
    """The reference's networks, loss, optimiser and its ``train_one_epoch``, imported from ``source``."""

    EPOCH = 1  # past the last-layer freeze (freeze_last_layer=1) and the temperature warm-up

    def __init__(self, source: str, spec: Spec, device: torch.device, precision: str,
                 initial: dict[str, torch.Tensor]) -> None:
        from torch import distributed as dist

        sys.path.insert(0, str(Path(source).resolve()))
        import main_dino  # noqa: PLC0415 -- the reference, from the folder the user gave
        import utils as ref_utils  # noqa: PLC0415
        import vision_transformer as vits  # noqa: PLC0415

        self.main, self.utils, self.spec, self.device = main_dino, ref_utils, spec, device
        if not dist.is_initialized():  # DDP and DINOLoss.update_center need a process group
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
        embed_dim, heads = VIT_SIZES[spec.arch]

        def backbone(drop_path: float):
            if spec.depth == 12:  # the reference's own constructor
                return vits.__dict__[spec.arch](patch_size=spec.patch_size, drop_path_rate=drop_path)
            return vits.VisionTransformer(patch_size=spec.patch_size, embed_dim=embed_dim, depth=spec.depth,
                                          num_heads=heads, mlp_ratio=4, qkv_bias=True,
                                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path)

        def head():
            return vits.DINOHead(embed_dim, spec.out_dim, use_bn=False, norm_last_layer=True,
                                 hidden_dim=spec.hidden_dim, bottleneck_dim=spec.bottleneck_dim)

        student = ref_utils.MultiCropWrapper(backbone(spec.drop_path), head())
        teacher = ref_utils.MultiCropWrapper(backbone(0.0), head())
        student.load_state_dict(initial)
        student, teacher = student.to(device), teacher.to(device)
        self.student = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
        self.teacher = teacher
        teacher.load_state_dict(student.state_dict())
        for p in teacher.parameters():
            p.requires_grad = False
        self.loss = main_dino.DINOLoss(spec.out_dim, spec.num_local + 2, TEACHER_TEMP, TEACHER_TEMP, 0,
                                       self.EPOCH + 1, student_temp=STUDENT_TEMP).to(device)
        self.optimizer = torch.optim.AdamW(ref_utils.get_params_groups(self.student))
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.args = Namespace(epochs=self.EPOCH + 1, clip_grad=CLIP_GRAD, freeze_last_layer=1)

    def run(self, crops: list[torch.Tensor], count: int, loss: Optional[torch.nn.Module] = None) -> list[float]:
        """``count`` iterations of the reference's train_one_epoch; returns their times (s)."""
        batches = FixedBatches(crops, count)
        total = (self.EPOCH + 1) * count
        schedule = [self.spec.lr] * total, [WEIGHT_DECAY] * total, [MOMENTUM] * total
        with _reference_on_cpu(self.device, self.utils), contextlib.redirect_stdout(io.StringIO()):
            self.main.train_one_epoch(self.student, self.teacher, self.teacher, loss or self.loss, batches,
                                      self.optimizer, *schedule, self.EPOCH, self.scaler, self.args)
            ended = time.perf_counter()
        stamps = batches.stamps + [ended]
        return [b - a for a, b in zip(stamps, stamps[1:])]


def measure_reference(source: str, spec: Spec, precision: str, host_allocator: str = "system") -> dict[str, Any]:
    """The reference's step; ``host_allocator=retain`` gives its process the package's
    allocator setting (``train.host_allocator``) for a like-for-like comparison."""
    from dinossl.runtime.host_memory import configure_host_allocator

    device = _setup(spec)
    retained = configure_host_allocator(host_allocator, device) if host_allocator != "system" else False
    reference = Reference(source, spec, device, precision, initial_student_state(spec, []))
    crops = make_crops(spec, device)
    baseline = reset_peak_memory(device)
    warmup = reference.run(crops, spec.warmup) if spec.warmup else []
    started = time.perf_counter()
    step_s = reference.run(crops, spec.steps)
    elapsed = time.perf_counter() - started
    return {"precision": precision, "host_allocator": host_allocator, "host_memory_retained": retained,
            **_timing(spec, warmup, elapsed, step_s), **_memory(device, baseline)}


# --------------------------------------------------------------------------------------------
# The package
# --------------------------------------------------------------------------------------------


def build_package(spec: Spec, overrides: list[str]):
    from dinossl.runtime.distributed import DistContext
    from dinossl.train.distiller import build_distiller

    config = package_config(spec, overrides)
    return build_distiller(config, DistContext(0, 1, 0, torch.device(spec.device)), num_teacher_views=2), config


def step_values(spec: Spec):
    from dinossl.objective import StepValues

    return StepValues(spec.lr, WEIGHT_DECAY, MOMENTUM, TEACHER_TEMP, freeze_last_layer=False)


def measure_package(spec: Spec, overrides: list[str]) -> dict[str, Any]:
    from dinossl.runtime.process_settings import apply_process_settings

    device = _setup(spec)
    # the process settings of a run (CUDA switches, train.host_allocator), by build_run's own function
    retained = apply_process_settings(package_config(spec, overrides).train, device)
    distiller, config = build_package(spec, overrides)
    crops, values = make_crops(spec, device), step_values(spec)
    baseline = reset_peak_memory(device)
    warmup_s = []
    for _ in range(spec.warmup):
        started = time.perf_counter()
        distiller.step(crops, values)[0].item()
        synchronize(device)
        warmup_s.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(spec.steps):
        loss, _ = distiller.step(crops, values)
    loss.item()  # the one host synchronisation, after the timed steps
    synchronize(device)
    elapsed = time.perf_counter() - started
    amp = distiller.amp_dtype
    return {"precision": "fp32" if amp is None else str(amp).replace("torch.", ""), "settings": overrides,
            "compile": config.train.compile, "pack_crops": config.train.pack_crops,
            "activation_checkpointing": config.train.activation_checkpointing,
            "optimizer_implementation": config.optim.implementation,
            "host_allocator": config.train.host_allocator, "host_memory_retained": retained,
            **_timing(spec, warmup_s, elapsed), **_memory(device, baseline)}


# --------------------------------------------------------------------------------------------
# Sanity check: the same losses from the same weights and crops
# --------------------------------------------------------------------------------------------


def sanity_check(source: str, spec: Spec, overrides: list[str], steps: int = 2) -> dict[str, Any]:
    """Two steps of each in fp32 with drop-path off from identical weights: their losses must
    agree (step 1 on the same weights to 1e-5 relative, step 2 after one update to 1e-3); and the
    package's first loss in its timed precision next to the reference's fp32 one."""
    device = _setup(spec)
    spec = replace(spec, drop_path=0.0)
    fp32 = [o for o in overrides if not o.startswith(("train.precision", "train.compile"))] + ["train.precision=fp32"]
    initial = initial_student_state(spec, fp32)
    crops, values = make_crops(spec, device), step_values(spec)

    reference = Reference(source, spec, device, "fp32", initial)
    recording = RecordingLoss(reference.loss)
    reference.run(crops, steps, loss=recording)
    theirs = recording.values

    distiller, _ = build_package(spec, fp32)
    ours = [distiller.step(crops, values)[0].item() for _ in range(steps)]
    timed, _ = build_package(spec, [o for o in overrides if not o.startswith("train.compile")])
    timed_loss = timed.step(crops, values)[0].item()

    relative = [abs(a - b) / abs(b) for a, b in zip(ours, theirs)]
    ok = relative[0] < 1e-5 and all(r < 1e-3 for r in relative[1:]) and all(map(math.isfinite, ours))
    amp = timed.amp_dtype
    return {
        "what": "losses of the reference's and the package's step, fp32, drop-path off, same weights and crops",
        "reference_losses": theirs, "package_losses": ours, "relative_differences": relative, "ok": ok,
        "timed_precision": "fp32" if amp is None else str(amp).replace("torch.", ""),
        "timed_precision_first_loss": timed_loss,
        "timed_precision_relative_difference": abs(timed_loss - theirs[0]) / abs(theirs[0]),
    }


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def in_child(work: Callable[..., dict[str, Any]], *args) -> dict[str, Any]:
    """Run ``work(*args)`` in a fresh process (its own peak memory, no state left by others)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(work, *args).result()
        except Exception as exc:  # one variant failing must not lose the others' figures
            return {"error": f"{type(exc).__name__}: {exc}"}


def _git_commit(folder: str) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    ratios = {}
    base = results.get("package", {})
    ref = results.get("reference", {})
    ref_retained = results.get("reference+retain", {})
    for name, result in results.items():
        if name.startswith("reference") or "images_per_s" not in result:
            continue
        entry = {}
        if "images_per_s" in ref:
            entry["images_per_s_over_reference"] = result["images_per_s"] / ref["images_per_s"]
            entry["peak_memory_over_reference"] = result["peak_memory_mb"] / ref["peak_memory_mb"]
        if "images_per_s" in ref_retained:
            entry["images_per_s_over_reference_retain"] = result["images_per_s"] / ref_retained["images_per_s"]
            entry["peak_memory_over_reference_retain"] = result["peak_memory_mb"] / ref_retained["peak_memory_mb"]
        if name != "package" and "images_per_s" in base:
            entry["images_per_s_over_package"] = result["images_per_s"] / base["images_per_s"]
            entry["peak_memory_over_package"] = result["peak_memory_mb"] / base["peak_memory_mb"]
        ratios[name] = entry
    return ratios


def _compile_cost(results: dict[str, dict[str, Any]]) -> Optional[dict[str, Any]]:
    """What compiling cost (first step minus a compiled step) and after how many steps the
    faster compiled steps have paid it back."""
    compiled, base = results.get("package+compile", {}), results.get("package", {})
    if "mean_step_s" not in compiled or "mean_step_s" not in base or not compiled["warmup_steps_s"]:
        return None
    cost = compiled["warmup_steps_s"][0] - compiled["mean_step_s"]
    saved = base["mean_step_s"] - compiled["mean_step_s"]
    return {"compile_s": cost, "saved_per_step_s": saved,
            "pays_off_after_steps": math.ceil(cost / saved) if saved > 0 else None,
            "pays_off_after_minutes": cost / saved * base["mean_step_s"] / 60 if saved > 0 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", metavar="REFERENCE_SRC_DIR", help="a clone of facebookresearch/dino")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings of the base package variant")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default=None,
                        help="cpu: ViT-tiny/16 2x224+8x96 batch 16; gpu: ViT-S/16 2x224+10x96 batch 64 "
                             "(default: gpu on a CUDA device, else cpu)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                        help="the package's base precision")
    parser.add_argument("--reference-precision", default=None, choices=["fp32", "fp16"],
                        help="the reference's (default: fp16 on a GPU, as its --use_fp16 default; fp32 on the CPU)")
    parser.add_argument("--reference-allocators", default="system",
                        help="comma-separated: system (the C library's defaults, as the reference runs), retain "
                             "(the package's train.host_allocator=retain, for a like-for-like figure)")
    parser.add_argument("--levers", default="", help=f"comma-separated package variants: {', '.join(LEVERS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sanity", action="store_true", help="skip the loss comparison")
    for name in ("arch", "patch_size", "depth", "global_size", "local_size", "num_local", "batch", "out_dim",
                 "hidden_dim", "bottleneck_dim"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=str if name == "arch" else int,
                            default=None, help="instead of the setting's value")
    parser.add_argument("--drop-path", type=float, default=0.1, help="the student's drop-path rate")
    args = parser.parse_args()

    unknown = [lever for lever in filter(None, args.levers.split(",")) if lever not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    reference_allocators = [a for a in args.reference_allocators.split(",") if a]
    if not reference_allocators or any(a not in ("system", "retain") for a in reference_allocators):
        parser.error(f"--reference-allocators takes system and/or retain, not {args.reference_allocators!r}")
    if not (Path(args.reference) / "main_dino.py").is_file():
        parser.error(f"{args.reference} holds no main_dino.py: give a clone of facebookresearch/dino")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        args.device = "cuda:0"  # DDP (the reference's wrapper) wants a device index
    on_gpu = args.device.startswith("cuda")
    values = dict(SETTINGS[args.setting or ("gpu" if on_gpu else "cpu")])
    values.update({k: getattr(args, k) for k in values if getattr(args, k) is not None})
    spec = Spec(**values, drop_path=args.drop_path, device=args.device, threads=args.threads, steps=args.steps,
                warmup=args.warmup, seed=args.seed)
    reference_precision = args.reference_precision or ("fp16" if on_gpu else "fp32")
    base = [f"train.precision={args.precision}", *args.overrides]

    variants: dict[str, list[str]] = {"package": base}
    for lever in filter(None, args.levers.split(",")):
        variants[f"package+{lever}"] = base + LEVERS[lever]

    report: dict[str, Any] = {
        "benchmark": "compare_reference",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "reference": {"source": str(Path(args.reference).resolve()), "git_commit": _git_commit(args.reference),
                      "precision": reference_precision},
        "config": {**asdict(spec), "crops": spec.crops, "lr": spec.lr, "weight_decay": WEIGHT_DECAY,
                   "momentum": MOMENTUM, "teacher_temp": TEACHER_TEMP, "clip_grad": CLIP_GRAD},
        "machine": describe(torch.device(args.device)),
    }
    results: dict[str, dict[str, Any]] = {}
    report["results"] = results

    def write() -> None:  # after every part: a run cut short keeps what it measured
        report["ratios"] = _ratios(results)
        report["compile_cost"] = _compile_cost(results)
        report["machine"]["load_average_after"] = describe(torch.device("cpu"))["load_average"]
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    if not args.no_sanity:
        report["sanity"] = in_child(sanity_check, args.reference, spec, base)
        print(json.dumps({"sanity": report["sanity"]}), flush=True)
        write()
    for allocator in reference_allocators:
        name = "reference" if allocator == "system" else f"reference+{allocator}"
        results[name] = in_child(measure_reference, args.reference, spec, reference_precision, allocator)
        print(json.dumps({name: results[name]}), flush=True)
        write()
    for name, overrides in variants.items():
        results[name] = in_child(measure_package, spec, overrides)
        print(json.dumps({name: results[name]}), flush=True)
        write()
    print(json.dumps({"ratios": report["ratios"], "compile_cost": report["compile_cost"],
                      "sanity_ok": report.get("sanity", {}).get("ok")}, indent=2))


if __name__ == "__main__":
    main()
