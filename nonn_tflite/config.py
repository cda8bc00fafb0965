"""Settings of every pipeline stage as dataclasses.

Each stage saves its config into the run's ``manifest.json`` so a run can be reproduced and
later stages (or a reader of the run) know exactly what produced each file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class DataConfig:
    """Which dataset, and how its validation split is carved from train."""

    dataset: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    subset: int | None = None  # cap on training images, for smoke tests


@dataclass
class TrainConfig:
    """Optimiser schedule shared by teacher and student training (SGD + cosine, as in NoNN)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    patience: int = 0  # 0 = no early stop; the best validation epoch is kept either way
    seed: int = 0


@dataclass
class TeacherConfig:
    arch: str = "wrn-16-2"
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str | None = None  # path of a user's pretrained .keras teacher, if imported
    # an imported teacher's input convention (--teacher-input; teacher.py): what was asked,
    # or after the teacher stage, what was chosen on the validation split
    input: str | None = None


@dataclass
class PartitionConfig:
    """Filter activation network + Louvain + balanced merge (GUIDE §1 steps 2-5)."""

    students: int = 2
    method: str = "louvain"  # or the ablation baselines "random" and "contiguous"
    rule: str = "hebbian-difference"  # or "hebbian"
    top_k: int = 50
    # drop edges under this percentile of non-zero weights; "auto" chooses it from the network
    # (partition.choose_percentile), None keeps every edge
    percentile: float | str | None = "auto"
    resolution: float = 1.0
    feature_layer: str | None = None
    max_images: int = 5000
    seed: int = 0


@dataclass
class BudgetConfig:
    """Per-device memory budget; boards override flash/ram per device."""

    flash_kb: float | None = None
    ram_kb: float | None = None
    boards: list[str] = field(default_factory=list)
    # A student never gets more than this share of the teacher's parameters, however roomy
    # its board: the point is compression, and a big board must not undo it.
    max_params_fraction: float = 0.125


@dataclass
class DistillConfig:
    """NoNN loss and student training (GUIDE §1 step 7; defaults of the reference)."""

    alpha: float = 0.9  # weight of the KD term against cross-entropy
    tau: float = 4.0  # softmax temperature of KD
    # Weight of attention transfer. Our AT term is the squared distance of L2-normalised maps
    # (0..2 per student); 10 puts it on the scale of the KD term. Zagoruyko's 1000 assumes a
    # per-element normalisation and drowned CE+KD here (digits: 30 % vs 98 % accuracy).
    beta: float = 10.0
    student_dropout: float = 0.1  # probability a student's vector is zeroed in training
    # student family the sizer chooses from: resnet, mbv2, or auto (both; most parameters
    # that fit the budget wins, nonn_tflite/sizing.choose_student)
    student_arch: str = "resnet"
    # Precompute the teacher's outputs once on un-augmented images and train the students
    # without augmentation: several times faster on a CPU, at some cost in accuracy.
    cache_teacher: bool = False
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40))
    # Augmented, consistent distillation (nonn_tflite/views.py): with views > 1 the teacher's
    # logits and partition attention maps are cached for this many flip/shift views of every
    # training image (view 0 the image itself) and each batch shows a student the very view
    # its targets came from. 1 keeps the behaviour above (online teacher or cache_teacher).
    views: int = 1


def to_dict(cfg: Any) -> dict:
    return asdict(cfg)


def from_dict(cls: type[T], data: dict | None) -> T:
    """Rebuild a (nested) config dataclass from a manifest dict; unknown keys are ignored."""
    data = data or {}
    kwargs = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        sub = f.default_factory if callable(getattr(f, "default_factory", None)) else None
        if isinstance(value, dict) and sub is not None and hasattr(sub(), "__dataclass_fields__"):
            value = from_dict(type(sub()), value)
        kwargs[f.name] = value
    return cls(**kwargs)
