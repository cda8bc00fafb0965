"""Teacher and student networks, built only from ops that full-integer TFLite and TFLM run.

Teachers: WRN-d-k (Zagoruyko & Komodakis), ResNet-20/ResNet-8 (He et al.; ResNet-8 is the
MLPerf Tiny image-classification reference), and ``airbench`` (Jordan 2024, see :func:`airbench`).
Their last 4-D feature map is the layer named ``features`` (after the final BN+ReLU, before
global pooling): the map NoNN partitions.

Students: two families, both parameterised by ``width`` and ``blocks`` per stage and ending in
a 1x1 conv to the partition's width |P_k|, BN, ReLU and global average pooling. The pooled
|P_k|-vector is all a device transmits. ``resnet`` (the default): basic residual blocks of
3x3 convs. ``mbv2``: a stride-2 stem (on images >= 16 px) and MobileNetV2 inverted residuals
(1x1 expand, 3x3 depthwise, 1x1 linear project), whose DEPTHWISE_CONV_2D has optimised CMSIS-NN and ESP-NN kernels. Conv2D,
DepthwiseConv2D, BatchNorm (folded at conversion), ReLU, Add, MaxPooling2D,
GlobalAveragePooling2D and Dense only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from nonn_tflite.errors import UsageError

TEACHER_ARCHS = ("wrn-<depth>-<width> (e.g. wrn-16-2, wrn-16-4, wrn-40-4), resnet-20, resnet-8, "
                 "airbench")
STUDENT_FAMILIES = ("resnet", "mbv2")


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

def build_teacher(arch: str, input_shape: tuple[int, int, int], num_classes: int, wd: float = 5e-4,
                  x_train: np.ndarray | None = None):
    """A teacher by name; see :data:`TEACHER_ARCHS`. ``airbench`` computes its frozen whitening
    layer from ``x_train`` (uint8 training images), so it needs them."""
    if arch == "airbench":
        if x_train is None:
            raise UsageError("--arch airbench computes its whitening layer from the training "
                             "images; none were given")
        return airbench(input_shape, num_classes, whitening_weights(x_train))
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


# -- airbench --------------------------------------------------------------------------------

AIRBENCH_WIDTHS = (64, 256, 256)
AIRBENCH_BN_MOMENTUM = 0.4  # Keras convention (1 - PyTorch's 0.6 in airbench94)
AIRBENCH_LOGIT_SCALE = 1 / 9


def whitening_weights(x_uint8: np.ndarray, patch: int = 2, eps: float = 5e-4,
                      max_images: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (p, p, C, 2pC), bias (2pC,)) of a conv that whitens the p x p patches of the
    training images: the covariance's eigenvectors scaled by 1/sqrt(eigenvalue + eps), and their
    negatives (as in airbench, so a ReLU after it keeps both signs).

    Computed on the first ``max_images`` images in [0, 1] units, with the patch mean folded into
    the bias (airbench normalises the input by mean/std first; whitening undoes the per-channel
    scale anyway, so the same layer works on the devices' [0, 1] input). ``eps`` is relative to
    the mean patch variance, which is what airbench's absolute 5e-4 is on normalised inputs.
    """
    x = np.asarray(x_uint8[:max_images], np.float64) / 255.0
    c = x.shape[-1]
    dim = patch * patch * c
    total, outer, count = np.zeros(dim), np.zeros((dim, dim)), 0
    for start in range(0, len(x), 500):
        win = np.lib.stride_tricks.sliding_window_view(x[start:start + 500], (patch, patch), axis=(1, 2))
        # (N, H', W', C, kh, kw) -> rows in Keras kernel order (kh, kw, C)
        rows = win.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dim)
        total += rows.sum(0)
        outer += rows.T @ rows
        count += len(rows)
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    lam, vec = np.linalg.eigh(cov)
    lam = np.maximum(lam, 0.0)
    k = vec / np.sqrt(lam + eps * np.trace(cov) / dim)
    kernel = np.concatenate([k, -k], axis=1)
    bias = -mean @ kernel
    return (kernel.reshape(patch, patch, c, 2 * dim).astype(np.float32), bias.astype(np.float32))


def airbench(input_shape, num_classes: int, whitening: tuple[np.ndarray, np.ndarray],
             widths: tuple[int, int, int] = AIRBENCH_WIDTHS, wd: float = 0.0):
    """airbench94's network (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU",
    arXiv 2404.00498; github.com/KellerJordan/cifar10-airbench), in Keras for full-int8 TFLM.

    whitening conv (2x2, valid, frozen) -> act -> 3 conv groups (64, 256, 256): conv3x3 ->
    maxpool 2 -> BN -> act -> conv3x3 -> BN -> act; -> global max pool -> Dense (no bias) x 1/9.
    About 2.0 M parameters on CIFAR-10.

    Changed from the paper, and why:

    * ReLU instead of GELU: TFLite Micro has no GELU kernel (not in its op resolver), and the
      int8 teacher must run on TFLM like every other model here.
    * The whitening layer is fully frozen, bias included (airbench trains its bias for the
      first 3 epochs); the patch mean is folded into that bias instead of normalising inputs.
    * A group max-pools only while its map is at least 4x4 (8x8 digits keep a 3x3 map), and the
      final MaxPool(3) is a pool over the whole map (the same op on CIFAR-10's 3x3).
    * BatchNorm has no scale (airbench freezes it at 1) and eps 1e-5 instead of 1e-12; the
      second conv of each group starts as identity (airbench's dirac init), the rest He-normal.

    The recipe (label smoothing, schedule, lookahead, TTA) is in :mod:`nonn_tflite.training`.
    """
    keras = _keras()
    kernel, bias = whitening
    inp = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[0], padding="valid", use_bias=True,
                            trainable=False, name="whiten",
                            kernel_initializer=keras.initializers.Constant(kernel),
                            bias_initializer=keras.initializers.Constant(bias))(inp)
    x = _relu(x, "whiten_relu")
    size = min(input_shape[:2]) - kernel.shape[0] + 1
    for g, w in enumerate(widths):
        p = f"g{g}"
        x = _conv(x, w, 3, 1, f"{p}_conv1", wd)
        if size >= 4:
            x = keras.layers.MaxPooling2D(2, name=f"{p}_pool")(x)
            size //= 2
        x = _relu(_airbench_bn(x, f"{p}_bn1"), f"{p}_relu1")
        x = _conv(x, w, 3, 1, f"{p}_conv2", wd)
        last = g == len(widths) - 1
        x = _relu(_airbench_bn(x, f"{p}_bn2"), "features" if last else f"{p}_relu2")
    x = keras.layers.MaxPooling2D(tuple(int(d) for d in x.shape[1:3]), name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(num_classes, use_bias=False, name="head",
                           kernel_regularizer=keras.regularizers.L2(wd) if wd else None)(x)
    out = keras.layers.Rescaling(AIRBENCH_LOGIT_SCALE, name="logits")(x)
    model = keras.Model(inp, out, name="airbench")
    for g in range(len(widths)):  # dirac init: the second conv of each group starts as identity
        layer = model.get_layer(f"g{g}_conv2")
        eye = np.zeros(layer.kernel.shape, np.float32)
        eye[1, 1] = np.eye(eye.shape[2], eye.shape[3], dtype=np.float32)
        layer.kernel.assign(eye)
    return model


def _airbench_bn(x, name: str):
    return _keras().layers.BatchNormalization(momentum=AIRBENCH_BN_MOMENTUM, epsilon=1e-5,
                                              scale=False, name=name)(x)


# -- students -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudentSpec:
    """Shape of one student: base ``width`` (doubling per stage) and residual ``blocks``/stage;
    ``family`` resnet (basic blocks) or mbv2 (inverted residuals expanding ``expansion``-fold;
    an mbv2 stage always has at least one block)."""

    width: int
    blocks: int
    out_channels: int
    stages: int = 3
    family: str = "resnet"
    expansion: int = 4  # mbv2 only

    def describe(self) -> str:
        if self.family == "mbv2":
            return f"mbv2 w{self.width} b{self.blocks} e{self.expansion} -> {self.out_channels}"
        return f"resnet w{self.width} b{self.blocks} -> {self.out_channels}"


def default_stages(input_shape: tuple[int, int, int]) -> int:
    return 3 if min(input_shape[:2]) >= 16 else 2


def build_student(spec: StudentSpec, input_shape, index: int, wd: float = 5e-4):
    """Student ``index``: image -> (map for attention transfer, pooled vector to transmit)."""
    keras = _keras()
    if spec.family not in STUDENT_FAMILIES:
        raise UsageError(f"unknown student family {spec.family!r}; expected one of "
                         f"{', '.join(STUDENT_FAMILIES)}")
    p = f"s{index}"
    inp = keras.Input(shape=input_shape, name=f"{p}_image")
    # mbv2 halves the map in its stem (as MobileNetV2 does) once images are >= 16 px: its
    # expanded maps at full resolution need about 3x the arena of a ResNet of the same width
    # (estimated 80 KB against 29 KB at width 8 on 32x32), more than an MCU student gets
    stem = 2 if spec.family == "mbv2" and min(input_shape[:2]) >= 16 else 1
    x = _relu(_bn(_conv(inp, spec.width, 3, stem, f"{p}_stem", wd), f"{p}_stem_bn"), f"{p}_stem_relu")
    strides = _stage_strides((input_shape[0] // stem, input_shape[1] // stem, input_shape[2]),
                             spec.stages)
    for s, stride in enumerate(strides):
        w = spec.width * 2**s
        if spec.family == "mbv2":
            for b in range(max(1, spec.blocks)):
                x = _inverted_residual(x, w, stride if b == 0 else 1, spec.expansion,
                                       f"{p}_s{s}b{b}", wd)
            continue
        if spec.blocks == 0 and s > 0:  # plain strided conv stage: the tiniest students
            x = _relu(_bn(_conv(x, w, 3, stride, f"{p}_c{s}", wd), f"{p}_c{s}_bn"), f"{p}_c{s}_relu")
        for b in range(spec.blocks):
            x = _basic_block(x, w, stride if b == 0 else 1, f"{p}_s{s}b{b}", wd)
            x = _relu(x, f"{p}_s{s}b{b}_out")
    x = _bn(_conv(x, spec.out_channels, 1, 1, f"{p}_proj", wd), f"{p}_proj_bn")
    fmap = _relu(x, f"{p}_map")
    vec = keras.layers.GlobalAveragePooling2D(name=f"{p}_vector")(fmap)
    return keras.Model(inp, [fmap, vec], name=f"student_{index}")


def _inverted_residual(x, filters: int, stride: int, expansion: int, p: str, wd: float):
    """MobileNetV2 block: 1x1 expand + ReLU, 3x3 depthwise + ReLU, 1x1 linear projection, and
    the identity added when the shapes match (Sandler et al. 2018; ReLU, not ReLU6: both are
    fused into the int8 conv, and ReLU keeps the calibrated range tight)."""
    keras = _keras()
    cin = int(x.shape[-1])
    y = x
    if expansion > 1:
        y = _relu(_bn(_conv(y, cin * expansion, 1, 1, f"{p}_expand", wd), f"{p}_expand_bn"),
                  f"{p}_expand_relu")
    y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                     depthwise_initializer="he_normal", name=f"{p}_dw")(y)
    y = _relu(_bn(y, f"{p}_dw_bn"), f"{p}_dw_relu")
    y = _bn(_conv(y, filters, 1, 1, f"{p}_project", wd), f"{p}_project_bn")
    if stride == 1 and cin == filters:
        y = keras.layers.Add(name=f"{p}_add")([x, y])
    return y


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
