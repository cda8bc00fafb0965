"""The minimal 32-bit TFLite Micro tensor arena of an int8 model, computed from its graph.

What TFLM puts in the arena (tensorflow/lite/micro/micro_allocator.cc):

* the *head*: every non-constant tensor and every scratch buffer a kernel's Prepare requests,
  laid out by the GreedyMemoryPlanner (:func:`planner_peak` replays it exactly);
* the *tail*: persistent allocations, one TfLiteEvalTensor per tensor, one
  NodeAndRegistration + builtin options + kernel OpData per operator, the per-channel
  multiplier and shift arrays of each conv, the allocator's own objects;
* while the plan is made, temporary memory after the tail: one AllocationInfo per tensor and
  scratch buffer and the planner's per-buffer tables (:func:`planning_bytes`); before that,
  each op's Prepare holds temporary TfLiteTensors (:func:`prepare_bytes`). For tiny models
  these phases, not the final layout, set the minimum.

The struct sizes are the 32-bit (ILP32) ones. The constants marked *calibrated* were fitted to
the minimal arenas measured on QEMU (Cortex-M4, CMSIS-NN; firmware_bridge.qemu.min_arena) for
students of the resnet family, and the whole estimate is checked against measurements of
other students in tests/test_sizing.py. Both graph readers (Keras before training,
flatbuffer after conversion) give the same :class:`ArenaGraph`, so the sizer and ``convert``
compute one figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

ALIGN = 16  # MicroArenaBufferAlignment()


def align(n: int, to: int = ALIGN) -> int:
    return (int(n) + to - 1) // to * to


# The arena a 32-bit device reserves for a minimal 32-bit arena, measured on QEMU
# (firmware_bridge/qemu.py) or estimated here: TFLM's arena use is deterministic for one model,
# TFLM commit, kernel set and ABI, so the margin only covers what the measurement cannot see:
# another core's CMSIS-NN scratch sizes (M4 54,996 B vs M55 55,028 B for ResNet-8: +0.06 %) and
# an arena buffer whose start is not 16-byte aligned (at most 15 B).
ARENA_32BIT_MARGIN_FRACTION = 0.02
ARENA_32BIT_MARGIN_MIN_BYTES = 64
ARENA_32BIT_MARGIN_RULE = (f"minimal 32-bit arena measured on QEMU +{ARENA_32BIT_MARGIN_FRACTION:.0%} "
                           f"(at least {ARENA_32BIT_MARGIN_MIN_BYTES} B), rounded up to {ALIGN} B")
ARENA_32BIT_ESTIMATE_RULE = (f"minimal 32-bit arena estimated from the graph (nonn_tflite/arena_model.py: "
                             f"TFLM's memory plan, CMSIS-NN scratch, 32-bit structs) "
                             f"+{ARENA_32BIT_MARGIN_FRACTION:.0%} (at least {ARENA_32BIT_MARGIN_MIN_BYTES} B), "
                             f"rounded up to {ALIGN} B; `nonn-tflite measure` replaces the estimate "
                             "with the QEMU measurement")


def arena_32bit_with_margin(measured_32bit: int) -> int:
    """The arena a device reserves for a ``measured_32bit`` minimal arena (AllocateTensors and
    Invoke succeed with it on the emulated core), or for :func:`arena_32bit_min`'s estimate."""
    return align(measured_32bit + max(ARENA_32BIT_MARGIN_MIN_BYTES,
                                      math.ceil(measured_32bit * ARENA_32BIT_MARGIN_FRACTION)))


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass(frozen=True)
class GraphOp:
    """One TFLM operator as the arena sees it: activation tensors in and out, and the shape
    facts its kernel's Prepare uses (scratch size, per-channel data)."""

    kind: str  # CONV_2D, DEPTHWISE_CONV_2D, ADD, MEAN, FULLY_CONNECTED, ...
    inputs: tuple[int, ...]  # activation tensor ids (constants are counted in ``constants``)
    output: int
    constants: int = 0  # constant tensors the op reads (weights, bias, axis)
    in_channels: int = 0
    out_channels: int = 0  # per-channel quantised channels (conv, depthwise)
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: str = "SAME"


@dataclass(frozen=True)
class ArenaGraph:
    """Activation tensors (int8 bytes, index = id; id 0 is the model input) and operators in
    execution order: everything TFLM's memory planner and allocator see of a model."""

    tensor_bytes: tuple[int, ...]
    ops: tuple[GraphOp, ...]

    @property
    def tensors(self) -> int:  # every tensor the flatbuffer declares
        return len(self.tensor_bytes) + sum(op.constants for op in self.ops)


def graph_from_keras(model) -> ArenaGraph:
    """The graph the int8 converter makes of a student: BatchNormalization folds into the conv
    before it and ReLU fuses into the op before it (conv or add); Conv2D, DepthwiseConv2D,
    Dense, Add and GlobalAveragePooling2D become one operator each. Operators come in the
    converter's order (:func:`_converter_order`), which sets the tensors' lifetimes."""
    alias: dict[int, int] = {}  # id(Keras tensor) -> id(the tensor that holds its bytes)
    sizes: dict[int, int] = {}
    ops: dict[int, GraphOp] = {}  # keyed by id(output tensor)
    inputs = [id(t) for t in model.inputs]

    def src(t) -> int:
        return alias[id(t)]

    for layer in model.layers:
        kind = type(layer).__name__
        ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        out = layer.output
        key = id(out)
        if kind == "InputLayer":
            alias[key] = key
            sizes[key] = _numel(out.shape[1:])
            continue
        if kind in ("BatchNormalization", "ReLU", "Activation", "Dropout"):
            alias[key] = src(ins[0])
            continue
        alias[key] = key
        sizes[key] = _numel(out.shape[1:])
        if kind in ("Conv2D", "DepthwiseConv2D"):
            kh, kw = (int(d) for d in layer.kernel_size)
            ops[key] = GraphOp("CONV_2D" if kind == "Conv2D" else "DEPTHWISE_CONV_2D",
                               (src(ins[0]),), key, 2,  # weights and bias (BN folds into one)
                               int(ins[0].shape[-1]), int(out.shape[-1]), (kh, kw),
                               int(layer.strides[0]), layer.padding.upper())
        elif kind == "Dense":
            ops[key] = GraphOp("FULLY_CONNECTED", (src(ins[0]),), key, 2, int(ins[0].shape[-1]),
                               int(out.shape[-1]))
        elif kind == "Add":
            ops[key] = GraphOp("ADD", tuple(src(t) for t in ins), key)
        elif kind == "GlobalAveragePooling2D":
            ops[key] = GraphOp("MEAN", (src(ins[0]),), key, 1, int(ins[0].shape[-1]),
                               int(out.shape[-1]))
        else:
            raise ValueError(f"the arena model does not know Keras layer {kind} ({layer.name})")
    order = _converter_order(ops, [src(t) for t in model.outputs])
    number = {t: i for i, t in enumerate([*inputs, *(ops[k].output for k in order)])}
    graph_ops = tuple(replace(ops[k], inputs=tuple(number[t] for t in ops[k].inputs),
                              output=number[ops[k].output]) for k in order)
    return ArenaGraph(tuple(sizes[t] for t in number), graph_ops)


def _converter_order(ops: dict[int, GraphOp], outputs: list[int]) -> list[int]:
    """Operators in the order the TFLite converter emits them: post-order from the outputs,
    an op's inputs visited last to first (a residual Add([shortcut, branch]) gets its branch,
    then the shortcut conv, then itself), as seen in every converted student."""
    done: set[int] = set()
    order: list[int] = []

    def visit(t: int) -> None:
        if t in done or t not in ops:
            return
        done.add(t)
        for i in reversed(ops[t].inputs):
            visit(i)
        order.append(t)

    for t in outputs:
        visit(t)
    return order


def graph_from_tflite(model) -> ArenaGraph:
    """The same facts read from a converted model (:class:`~nonn_tflite.tflite_model.TFLiteModel`)."""
    ids: dict[int, int] = {}
    sizes: list[int] = []

    def act(t: int) -> int:
        if t not in ids:
            info = model.tensors[t]
            ids[t] = len(sizes)
            sizes.append(_numel(info.shape) * _dtype_bytes(info.dtype))
        return ids[t]

    for t in (i.index for i in model.input_tensors()):
        act(t)
    ops = []
    for op in model.operators:
        acts = [t for t in op.inputs if t >= 0 and not model.tensors[t].is_constant]
        consts = [t for t in op.inputs if t >= 0 and model.tensors[t].is_constant]
        in_ch = out_ch = 0
        kernel, stride = (1, 1), int(op.options.get("stride_w", 1) or 1)
        if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = model.tensors[op.inputs[1]].shape  # conv: (Cout, kh, kw, Cin); dw: (1, kh, kw, Cout)
            kernel = (int(w[1]), int(w[2]))
            in_ch = int(model.tensors[op.inputs[0]].shape[-1])
            out_ch = int(w[0] if op.opcode == "CONV_2D" else w[3])
        elif op.opcode in ("MEAN", "FULLY_CONNECTED"):
            in_ch = int(model.tensors[op.inputs[0]].shape[-1])
            out_ch = int(model.tensors[op.outputs[0]].shape[-1])
        ins = tuple(act(t) for t in acts)
        ops.append(GraphOp(op.opcode, ins, act(op.outputs[0]), len(consts), in_ch, out_ch,
                           kernel, stride, str(op.options.get("padding", "SAME"))))
    return ArenaGraph(tuple(sizes), tuple(ops))


def _dtype_bytes(dtype: str) -> int:
    return {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float32": 4}.get(dtype, 4)


def scratch_bytes(op: GraphOp) -> list[int]:
    """Scratch buffers the op's Prepare requests with CMSIS-NN: for conv the larger of the DSP
    cores' (M4, M7: the boards) and the MVE cores' (M55) buffer; the reference kernels request
    none for conv. Formulas from third_party/cmsis_nn/Source/ConvolutionFunctions/
    arm_{convolve,depthwise_conv}_get_buffer_sizes_s8.c and kernels/reduce_common.cc."""
    kh, kw = op.kernel
    if op.kind == "CONV_2D":
        if kh == kw == 1 and op.stride == 1:
            return []  # arm_convolve_1x1_s8_fast: no buffer with GCC (ARMCC only wants one)
        col = kh * kw * op.in_channels
        dsp = 2 * (col + (-col) % 4) * 2  # im2col: two int16 columns
        mve = 4 * ((col + 15) // 16) * 16  # four int8 im2col lanes of 16
        return [max(dsp, mve)]
    if op.kind == "DEPTHWISE_CONV_2D":
        if op.in_channels != op.out_channels:
            return []  # channel multiplier > 1: arm_depthwise_conv_s8, no buffer
        # DSP cores only (the boards: M4, M7): MVE's arm_depthwise_conv_s8_opt wants
        # 4 x CH_IN_BLOCK_MVE (124) x kh x kw B, and no board has an M55.
        return [] if (kh, kw) == (3, 3) else [2 * op.in_channels * kh * kw]
    if op.kind == "MEAN":  # int32 accumulators, input iterator (4 dims), resolved axes (2)
        return [4 * op.out_channels, 4 * 4, 4 * 2]
    return []


def planner_peak(graph: ArenaGraph) -> int:
    """Bytes TFLM's GreedyMemoryPlanner needs for the activations and scratch buffers: each
    buffer 16-byte aligned, live from the op that makes it (the model input from the start)
    to the last op that reads it (the outputs to the end), scratch for its own op only;
    placed largest first at the lowest offset free over its lifetime
    (tensorflow/lite/micro/memory_planner/greedy_memory_planner.cc)."""
    n = len(graph.ops)
    first = [0] * len(graph.tensor_bytes)
    last = [0] * len(graph.tensor_bytes)
    for i, op in enumerate(graph.ops, start=1):
        first[op.output] = i
        last[op.output] = max(last[op.output], i)
        for t in op.inputs:
            last[t] = i
    produced = {op.output for op in graph.ops}
    consumed = {t for op in graph.ops for t in op.inputs}
    for t in produced - consumed:
        last[t] = n  # model outputs live to the end
    buffers = [(align(b), f, l) for b, f, l in zip(graph.tensor_bytes, first, last) if b]
    for i, op in enumerate(graph.ops, start=1):
        buffers += [(align(b), i, i) for b in scratch_bytes(op) if b]
    # TFLM fills its sort array from the back (buffer 0 last), then bubble-sorts it by size,
    # descending and stable: equal sizes are placed in reverse order of their ids.
    order = sorted(reversed(range(len(buffers))), key=lambda k: -buffers[k][0])
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    peak = 0
    for k in order:
        size, f, l = buffers[k]
        live = sorted((o, s) for o, s, pf, pl in placed if not (pl < f or l < pf))
        offset = 0
        for o, s in live:
            if o - offset >= size:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, f, l))
        peak = max(peak, offset + size)
    return peak


# -- persistent allocations and the planning phase (32-bit sizes) --------------------------------

EVAL_TENSOR_BYTES = 12  # TfLiteEvalTensor: data pointer, dims pointer, type (ILP32)
SCRATCH_HANDLE_BYTES = 4  # ScratchBufferHandle: one data pointer, per scratch buffer
SCRATCH_REQUEST_BYTES = 12  # internal::ScratchBufferRequest, kept until the plan is made
MAX_SCRATCH_PER_OP = 12  # kMaxScratchBuffersPerOp: the request list always has room for 12 more
ALLOCATION_INFO_BYTES = 24  # AllocationInfo: bytes, output_ptr, first, last, offline, flag
PLANNER_BUFFER_BYTES = 40  # GreedyMemoryPlanner: requirements 16 + list entry 12 + 3 ints
TEMP_TENSOR_BYTES = 40  # TfLiteTensor under TF_LITE_STATIC_MEMORY (4-byte aligned temporaries)
AFFINE_QUANTIZATION_BYTES = 12  # TfLiteAffineQuantization: scale, zero_point, dimension
# calibrated: what the tail holds besides the terms above. Least squares of
# arena_used_bytes() - planner_peak - the terms above, measured on QEMU mps2-an386 (Cortex-M4,
# CMSIS-NN, TFLM of ../shared/tflm) for 16 untrained resnet-family students (widths 4-48,
# blocks 0-2, inputs 8x8x1, 16x16x3, 28x28x1, 32x32x3): 207 B + 119 B per conv + 115 B per
# other op, residuals -30..+29 B. The fixed term is rounded up past the largest residual.
TAIL_FIXED_BYTES = 240  # allocator objects, interpreter graph, input/output TfLiteTensors
# DEPTHWISE_CONV_2D: arena_used_bytes() of two mbv2 students (w4 b0 on 16x16x3, w8 b1 on
# 32x32x3; 3 depthwise ops each) in exported cortex-m projects on QEMU M4 CMSIS-NN (the probe
# does not register the op) was 20 B above the conv constant for both: 7 B per op, rounded to 8.
OP_BYTES = {"CONV_2D": 120, "DEPTHWISE_CONV_2D": 128}  # NodeAndRegistration + options + OpData
OP_BYTES_DEFAULT = 116  # any other operator (ADD, MEAN, FULLY_CONNECTED, ...)
# measured: the minimal arena is arena_used_bytes() + 12 B on every model of the fit, the
# probe's arena buffer starting off a 16-byte boundary; a device's buffer may lose up to 15 B.
ARENA_START_BYTES = 16


def channel_bytes(op: GraphOp) -> int:
    """Per-channel persistent arrays: a conv's output multiplier and shift (int32 each, one
    AllocatePersistentBuffer each); CMSIS-NN fully connected on MVE keeps int32 kernel sums."""
    if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return 2 * align(4 * op.out_channels)
    if op.kind == "FULLY_CONNECTED":
        return align(4 * op.out_channels)
    return 0


def tail_bytes(graph: ArenaGraph) -> int:
    """Persistent arena bytes once AllocateTensors has finished."""
    scratch = sum(len(scratch_bytes(op)) for op in graph.ops)
    per_op = sum(OP_BYTES.get(op.kind, OP_BYTES_DEFAULT) + channel_bytes(op) for op in graph.ops)
    return (TAIL_FIXED_BYTES + align(EVAL_TENSOR_BYTES * graph.tensors) + per_op
            + align(SCRATCH_HANDLE_BYTES * scratch))


def planning_bytes(graph: ArenaGraph) -> int:
    """Temporary bytes while the memory plan is made (MicroAllocator::CommitStaticMemoryPlan):
    the scratch requests, one AllocationInfo per tensor and scratch buffer, and the planner's
    tables for every planned buffer."""
    scratch = sum(len(scratch_bytes(op)) for op in graph.ops)
    planned = sum(1 for b in graph.tensor_bytes if b) + scratch
    return (align(SCRATCH_REQUEST_BYTES * (scratch + MAX_SCRATCH_PER_OP))
            + align(ALLOCATION_INFO_BYTES * (graph.tensors + scratch))
            + align(PLANNER_BUFFER_BYTES * planned))


def prepare_bytes(graph: ArenaGraph) -> int:
    """Temporary bytes while one op's Prepare runs, the largest over the ops: the scratch
    request list and a temporary TfLiteTensor with its quantisation for every tensor the op
    touches (MicroAllocator::AllocateTempTfLiteTensor; scales are read in place)."""
    scratch = sum(len(scratch_bytes(op)) for op in graph.ops)
    requests = align(SCRATCH_REQUEST_BYTES * (scratch + MAX_SCRATCH_PER_OP))

    def temp(channels: int) -> int:  # TfLiteTensor + TfLiteAffineQuantization + zero points
        return TEMP_TENSOR_BYTES + AFFINE_QUANTIZATION_BYTES + 4 + 4 * channels

    def op_temp(op: GraphOp) -> int:
        per_channel = op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D")
        consts = op.constants * temp(op.out_channels if per_channel else 1)
        return (len(op.inputs) + 1) * temp(1) + consts

    return requests + max((op_temp(op) for op in graph.ops), default=0)


def arena_32bit_min(graph: ArenaGraph) -> int:
    """The estimated smallest arena with which a 32-bit TFLM allocates and invokes the model:
    the tail plus the largest of the memory plan, the planning phase's temporary tables and
    one op's Prepare temporaries (the last two set the minimum of tiny models only)."""
    phases = (planner_peak(graph), planning_bytes(graph), prepare_bytes(graph))
    return align(tail_bytes(graph) + max(phases) + ARENA_START_BYTES)


def arena_32bit_min_of_tflite(data: bytes) -> int:
    """:func:`arena_32bit_min` of a converted .tflite flatbuffer."""
    from nonn_tflite.tflite_model import parse_tflite

    return arena_32bit_min(graph_from_tflite(parse_tflite(bytes(data))))
