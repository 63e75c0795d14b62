"""The typed configuration of a DINO run: five sections that follow the data flow
(data -> model -> loss -> optim -> train), with the reference's values as defaults.

Presets (``presets/*.yaml``), YAML files and ``section.field=value`` overrides are applied by
:mod:`dinossl.config.loading`; :mod:`dinossl.config.validation` checks the values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

VIT_ARCHS = ("vit_tiny", "vit_small", "vit_base")
ARCHS = VIT_ARCHS + ("resnet50",)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PHOTOMETRIC_PLACES = ("loader", "device")
GEOMETRIC_MODES = ("per_image", "batched", "device")
OPTIMIZERS = ("adamw", "sgd")
LOGGERS = ("none", "wandb", "mlflow")
# The paper's ablations (Tables 7-9, Figs. 6-7): the first value of each is DINO's.
TEACHER_UPDATES = ("ema", "student", "previous_iteration", "previous_epoch")
CENTERINGS = ("ema", "sinkhorn", "none")
LOSS_CRITERIA = ("cross_entropy", "mse")
OPTIMIZER_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")
# auto: retain on CPU runs (dinossl.runtime.host_memory)
HOST_ALLOCATORS = ("auto", "retain", "system")


@dataclass
class CropConfig:
    """Multi-crop views: 2 global crops and ``num_local`` local crops per image."""

    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    num_local: int = 8
    blur_radius: tuple[float, float] = (0.1, 2.0)  # Gaussian blur radius range, in pixels
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2


@dataclass
class DataConfig:
    """Where images come from and how they are loaded."""

    path: Optional[str] = None  # None: the CIFAR-10 sample shipped inside the package
    crops: CropConfig = field(default_factory=CropConfig)
    num_workers: int = 4
    # Where colour jitter, grayscale, blur, solarisation and normalisation run: "loader" (per
    # image, PIL/torchvision in the loader workers) or "device" (batched on the training device;
    # the loader only crops, flips and draws the parameters). See docs/training.md.
    photometric: str = "loader"
    # How crops are cut: "per_image" (PIL, in the loader workers), "batched" (one batched resize
    # per view in the training process; needs photometric=device and images of one size, held in
    # memory) or "device" (JPEG files read as bytes by the loader workers, decoded and cropped on
    # the training device: nvJPEG on a GPU, images of any sizes; needs photometric=device).
    # See docs/training.md.
    geometric: str = "per_image"


@dataclass
class ModelConfig:
    """Backbone and projection head."""

    arch: str = "vit_small"
    patch_size: int = 16
    img_size: int = 224  # size the position embeddings are laid out for
    depth: Optional[int] = None  # None: the architecture's standard depth (12)
    drop_path: float = 0.1  # student only; the teacher never drops paths
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    # ablations: a BYOL-style predictor MLP (K -> head_hidden_dim -> K, BN + GELU) on the
    # student's head output only; the teacher has none (paper, Table 7 row 6)
    predictor: bool = False


@dataclass
class LossConfig:
    """Temperatures and centering of the DINO objective."""

    student_temp: float = 0.1
    teacher_temp: float = 0.04  # final teacher temperature
    warmup_teacher_temp: float = 0.04  # starting teacher temperature
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    # ablations (paper, Table 7 and Fig. 7); see docs/ablations.md
    centering: str = "ema"  # ema (DINO), sinkhorn (Sinkhorn-Knopp on the teacher output) or none
    sinkhorn_iterations: int = 3  # with centering=sinkhorn, as SwAV
    sharpening: bool = True  # false: the teacher's temperature is the student's (no sharper teacher)
    criterion: str = "cross_entropy"  # cross_entropy (DINO) or mse (between L2-normalised P_s and P_t)


@dataclass
class OptimConfig:
    """AdamW, its schedules and the teacher momentum."""

    base_lr: float = 5e-4  # per 256 images of global batch
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per parameter tensor; 0 disables
    freeze_last_layer: int = 1  # epochs during which the head's last layer is not updated
    momentum_teacher: float = 0.996
    optimizer: str = "adamw"  # adamw (the paper's choice) or sgd (momentum 0.9, for ResNets)
    # ablations: how the teacher follows the student (paper, Fig. 6 and Table 7 row 2): ema (the
    # momentum teacher), student (a copy after every step), previous_iteration (the student of
    # the previous iteration), previous_epoch (the student of the last epoch boundary)
    teacher_update: str = "ema"
    # speed: how torch's optimizer runs (auto: fused, one kernel for all tensors, where torch has it)
    implementation: str = "auto"


@dataclass
class TrainConfig:
    """Loop length, batch, precision, logging and checkpoints."""

    epochs: int = 100
    batch_size_per_process: int = 64
    # auto: bf16 on GPUs (fp16 with a scaler before compute capability 8.0) and on CPUs with
    # native bf16 (AVX512-BF16, AMX); fp32 on other CPUs and on Apple-silicon GPUs
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    log_every: int = 10  # steps between JSON log lines
    progress_bar: bool = True
    # k-NN top-1 at the end / every N epochs (0: never): on train.val_data (teacher and student)
    # when set, else on the built-in sample when the run trains on it (the teacher against its
    # random initialisation; train.knn_student: the student too)
    knn_at_end: bool = False
    knn_every: int = 0
    dist_timeout_s: int = 600  # process-group timeout: a dead peer ends the run after this
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    # CUDA arithmetic of fp32 runs
    tf32: bool = True  # precision fp32 on CUDA: TF32 matmuls/convolutions (the reference's); false: IEEE fp32
    # preemption and mid-epoch resume
    checkpoint_every_steps: int = 0  # also write checkpoint.pth every N steps inside an epoch; 0: epoch ends only
    # Keeping checkpoints and watching a run (saved probes, monitors, loggers)
    keep_every: int = 0  # also keep every N-th epoch's checkpoint as checkpointNNNN.pth; 0: only the latest
    val_data: Optional[str] = None  # labelled folder (train/ + val/) for the k-NN of teacher and student
    attention_every: int = 0  # epochs between attention-map snapshots of a few fixed images (ViT); 0: never
    attention_images: Optional[str] = None  # image folder for them; None: the built-in sample's first images
    logger: str = "none"  # also send the run's records to: none | wandb | mlflow
    logger_project: str = "dinossl"  # W&B project / MLflow experiment name
    # ablations: the k-NN checks also score the student beside the teacher (paper, Fig. 6 left)
    knn_student: bool = False
    # speed levers (docs/benchmarks.md#speed-settings)
    compile: bool = False  # torch.compile of student, teacher and loss (pays off on long runs)
    pack_crops: bool = False  # ViT: one backbone pass for all crop resolutions (packed token sequences)
    activation_checkpointing: bool = False  # ViT student: recompute block activations in backward (less memory)
    host_allocator: str = "auto"  # retain: glibc keeps freed host memory for reuse; system: its defaults; auto: retain on CPU


@dataclass
class Config:
    """One DINO run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), safe for JSON, YAML and checkpoints."""
        return plain(dataclasses.asdict(self))


def plain(value: Any) -> Any:
    """Nested dicts with tuples turned into lists (safe for JSON, YAML and checkpoints)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
