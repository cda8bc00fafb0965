"""Teacher and student networks, built only from ops that full-integer TFLite and TFLM run.

Teachers: WRN-d-k (Zagoruyko & Komodakis), ResNet-20/ResNet-8 (He et al.; ResNet-8 is the
MLPerf Tiny image-classification reference). Their last 4-D feature map is the layer named
``features`` (after the final BN+ReLU, before global pooling): the map NoNN partitions.

Students: a ResNet-style family parameterised by ``width`` and ``blocks`` per stage, ending in
a 1x1 conv to the partition's width |P_k|, BN, ReLU and global average pooling. The pooled
|P_k|-vector is all a device transmits. Conv2D, BatchNorm (folded at conversion), ReLU, Add,
GlobalAveragePooling2D and Dense only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nonn_tflite.errors import UsageError

TEACHER_ARCHS = "wrn-<depth>-<width> (e.g. wrn-16-2, wrn-16-4, wrn-40-4), resnet-20, resnet-8"


def _keras():
    import keras

    return keras


def _conv(x, filters: int, kernel: int, stride: int, name: str, wd: float):
    k = _keras()
    return k.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                           kernel_initializer="he_normal",
                           kernel_regularizer=k.regularizers.L2(wd) if wd else None, name=name)(x)


def _bn(x, name: str):
    return _keras().layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)


def _relu(x, name: str):
    return _keras().layers.ReLU(name=name)(x)


# -- teachers -------------------------------------------------------------------------------

def build_teacher(arch: str, input_shape: tuple[int, int, int], num_classes: int, wd: float = 5e-4):
    """A teacher by name; see :data:`TEACHER_ARCHS`."""
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    if m:
        depth, width = int(m.group(1)), int(m.group(2))
        if (depth - 4) % 6 or depth < 10 or width < 1:
            raise UsageError(f"--arch {arch}: WRN depth must be 6n+4 >= 10 (10, 16, 22, 28, 40)")
        return wide_resnet(depth, width, input_shape, num_classes, wd)
    if arch in ("resnet-20", "resnet20"):
        return resnet(3, (16, 32, 64), input_shape, num_classes, wd, name="resnet-20")
    if arch in ("resnet-8", "resnet8"):
        return resnet(1, (16, 32, 64), input_shape, num_classes, wd, name="resnet-8")
    raise UsageError(f"unknown --arch {arch!r}; expected {TEACHER_ARCHS}")


def _stage_strides(input_shape: tuple[int, int, int], stages: int) -> list[int]:
    """Downsample between stages only while the map stays >= 2x2 (8x8 digits keep 2x2)."""
    size, strides = min(input_shape[:2]), [1]
    for _ in range(stages - 1):
        s = 2 if size >= 4 else 1
        size //= s
        strides.append(s)
    return strides


def wide_resnet(depth: int, width: int, input_shape, num_classes: int, wd: float = 5e-4):
    """Pre-activation WRN-depth-width; its final BN+ReLU is the ``features`` layer."""
    keras = _keras()
    n = (depth - 4) // 6
    widths = (16 * width, 32 * width, 64 * width)
    inp = keras.Input(shape=input_shape, name="image")
    x = _conv(inp, 16, 3, 1, "stem_conv", wd)
    for g, (w, stride) in enumerate(zip(widths, _stage_strides(input_shape, 3))):
        for b in range(n):
            p = f"g{g}b{b}"
            s = stride if b == 0 else 1
            pre = _relu(_bn(x, f"{p}_bn1"), f"{p}_relu1")
            shortcut = x if (s == 1 and x.shape[-1] == w) else _conv(pre, w, 1, s, f"{p}_short", wd)
            y = _conv(pre, w, 3, s, f"{p}_conv1", wd)
            y = _relu(_bn(y, f"{p}_bn2"), f"{p}_relu2")
            y = _conv(y, w, 3, 1, f"{p}_conv2", wd)
            x = keras.layers.Add(name=f"{p}_add")([shortcut, y])
    x = _relu(_bn(x, "final_bn"), "features")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(num_classes, name="logits",
                             kernel_regularizer=keras.regularizers.L2(wd) if wd else None)(x)
    return keras.Model(inp, out, name=f"wrn-{depth}-{width}")


def _basic_block(x, filters: int, stride: int, p: str, wd: float):
    keras = _keras()
    y = _relu(_bn(_conv(x, filters, 3, stride, f"{p}_conv1", wd), f"{p}_bn1"), f"{p}_relu1")
    y = _bn(_conv(y, filters, 3, 1, f"{p}_conv2", wd), f"{p}_bn2")
    if stride != 1 or x.shape[-1] != filters:
        x = _bn(_conv(x, filters, 1, stride, f"{p}_short", wd), f"{p}_short_bn")
    return keras.layers.Add(name=f"{p}_add")([x, y])


def resnet(blocks: int, widths: tuple[int, ...], input_shape, num_classes: int, wd: float = 5e-4,
           name: str = "resnet"):
    """Post-activation CIFAR ResNet (ResNet-20: 3 blocks/stage; ResNet-8: 1 block/stage)."""
    keras = _keras()
    inp = keras.Input(shape=input_shape, name="image")
    x = _relu(_bn(_conv(inp, widths[0], 3, 1, "stem_conv", wd), "stem_bn"), "stem_relu")
    strides = _stage_strides(input_shape, len(widths))
    for s, (w, stride) in enumerate(zip(widths, strides)):
        for b in range(blocks):
            x = _basic_block(x, w, stride if b == 0 else 1, f"s{s}b{b}", wd)
            last = s == len(widths) - 1 and b == blocks - 1
            x = _relu(x, "features" if last else f"s{s}b{b}_out")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(num_classes, name="logits",
                             kernel_regularizer=keras.regularizers.L2(wd) if wd else None)(x)
    return keras.Model(inp, out, name=name)


# -- students -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudentSpec:
    """Shape of one student: base ``width`` (doubling per stage) and residual ``blocks``/stage."""

    width: int
    blocks: int
    out_channels: int
    stages: int = 3

    def describe(self) -> str:
        return f"resnet w{self.width} b{self.blocks} -> {self.out_channels}"


def default_stages(input_shape: tuple[int, int, int]) -> int:
    return 3 if min(input_shape[:2]) >= 16 else 2


def build_student(spec: StudentSpec, input_shape, index: int, wd: float = 5e-4):
    """Student ``index``: image -> (map for attention transfer, pooled vector to transmit)."""
    keras = _keras()
    p = f"s{index}"
    inp = keras.Input(shape=input_shape, name=f"{p}_image")
    x = _relu(_bn(_conv(inp, spec.width, 3, 1, f"{p}_stem", wd), f"{p}_stem_bn"), f"{p}_stem_relu")
    strides = _stage_strides(input_shape, spec.stages)
    for s, stride in enumerate(strides):
        w = spec.width * 2**s
        if spec.blocks == 0 and s > 0:  # plain strided conv stage: the tiniest students
            x = _relu(_bn(_conv(x, w, 3, stride, f"{p}_c{s}", wd), f"{p}_c{s}_bn"), f"{p}_c{s}_relu")
        for b in range(spec.blocks):
            x = _basic_block(x, w, stride if b == 0 else 1, f"{p}_s{s}b{b}", wd)
            x = _relu(x, f"{p}_s{s}b{b}_out")
    x = _bn(_conv(x, spec.out_channels, 1, 1, f"{p}_proj", wd), f"{p}_proj_bn")
    fmap = _relu(x, f"{p}_map")
    vec = keras.layers.GlobalAveragePooling2D(name=f"{p}_vector")(fmap)
    return keras.Model(inp, [fmap, vec], name=f"student_{index}")


def deployable_student(student):
    """The part a device runs: image -> pooled vector (drops the attention-map output)."""
    keras = _keras()
    return keras.Model(student.input, student.outputs[1], name=student.name)


def build_fusion(total_width: int, num_classes: int, wd: float = 5e-4):
    """The fusion head: one Dense over the concatenated student vectors (as in NoNN)."""
    keras = _keras()
    inp = keras.Input(shape=(total_width,), name="features")
    out = keras.layers.Dense(num_classes, name="fusion_logits",
                             kernel_regularizer=keras.regularizers.L2(wd) if wd else None)(inp)
    return keras.Model(inp, out, name="fusion")
