# TFLite Micro for bare-metal Cortex-M, built from a tree made by TFLM's create_tflm_tree.py
# (or a tflite-micro checkout). Included by every exported cortex-m project and by
# `nonn-tflite measure`'s probe. Flags follow TFLM's own cortex_m_generic target.
#
#   CPU      cortex-m4 | cortex-m7 | cortex-m55
#   KERNELS  cmsis-nn | reference
#   TFLM_DIR the tree (default: $NONN_TFLM_DIR)
#   TFLM_OPS builtin ops to compile kernels for: CONV_2D MEAN ... (only what the model needs)
#   TFLM_LIB a prebuilt libtflm.a for this CPU/KERNELS/TFLM_KERNELS (skips the build)

CPU ?= cortex-m4
KERNELS ?= cmsis-nn
TFLM_DIR ?= $(NONN_TFLM_DIR)
BUILD ?= build/$(CPU)-$(KERNELS)
CROSS ?= arm-none-eabi-
CC := $(CROSS)gcc
CXX := $(CROSS)g++
AR := $(CROSS)ar
SIZE := $(CROSS)size

ifeq ($(strip $(TFLM_DIR)),)
$(error no TFLite Micro tree: set NONN_TFLM_DIR (or TFLM_DIR=) to a tree made by create_tflm_tree.py, or run scripts/fetch_tflm.sh)
endif
override TFLM_DIR := $(abspath $(TFLM_DIR))
ifeq ($(wildcard $(TFLM_DIR)/tensorflow/lite/micro/micro_interpreter.cc),)
$(error $(TFLM_DIR) is not a TFLite Micro tree (no tensorflow/lite/micro/micro_interpreter.cc))
endif

ifeq ($(CPU),cortex-m4)
  ARCH_FLAGS := -mcpu=cortex-m4+nofp -mfloat-abi=soft -mthumb
  CPU_DEFS := -DCPU_M4=1 -DARMCM4
  MACHINE := mps2-an386
else ifeq ($(CPU),cortex-m7)
  ARCH_FLAGS := -mcpu=cortex-m7+nofp -mfloat-abi=soft -mthumb
  CPU_DEFS := -DCPU_M7=1 -DARMCM7
  MACHINE := mps2-an500
else ifeq ($(CPU),cortex-m55)
  ARCH_FLAGS := -mcpu=cortex-m55 -mfloat-abi=hard -mthumb
  CPU_DEFS := -DCPU_M55=1 -DARMCM55
  MACHINE := mps3-an547
else
  $(error CPU=$(CPU): expected cortex-m4, cortex-m7 or cortex-m55)
endif

ifeq ($(KERNELS),cmsis-nn)
  KERNEL_DEFS := -DCMSIS_NN
else ifeq ($(KERNELS),reference)
  KERNEL_DEFS :=
else
  $(error KERNELS=$(KERNELS): expected cmsis-nn or reference)
endif

INCLUDES := -I$(TFLM_DIR) -I$(TFLM_DIR)/third_party/flatbuffers/include \
  -I$(TFLM_DIR)/third_party/gemmlowp -I$(TFLM_DIR)/third_party/ruy \
  -I$(TFLM_DIR)/third_party/cmsis_nn -I$(TFLM_DIR)/third_party/cmsis_nn/Include \
  -I$(TFLM_DIR)/third_party/cmsis/CMSIS/Core/Include \
  -I$(TFLM_DIR)/third_party/cmsis/Cortex_DFP/Device/$(subst -DARM,ARM,$(lastword $(CPU_DEFS)))/Include
DEFS := $(CPU_DEFS) $(KERNEL_DEFS) -DTF_LITE_STATIC_MEMORY -DTF_LITE_MCU_DEBUG_LOG \
  -DKERNELS_OPTIMIZED_FOR_SPEED
COMMON_FLAGS := $(ARCH_FLAGS) $(DEFS) $(INCLUDES) -ffunction-sections -fdata-sections \
  -funsigned-char -fno-unwind-tables -fmessage-length=0 -Wno-psabi
CXX_FLAGS := $(COMMON_FLAGS) -std=c++17 -fno-rtti -fno-exceptions -fno-threadsafe-statics \
  -fno-use-cxa-atexit
C_FLAGS := $(COMMON_FLAGS) -std=c11
CORE_OPT := -Os
KERNEL_OPT := -O2

# -- sources: the core runtime and the kernels of TFLM_OPS, selected by tflm_sources.py (the
# one source selector of nonn-tflite, shared with the Linux/host builds).
TFLM_SOURCES_PY ?= scripts/tflm_sources.py
TFLM_SRCS := $(shell python3 $(TFLM_SOURCES_PY) $(TFLM_DIR) $(if $(filter reference,$(KERNELS)),--reference) $(TFLM_OPS) || echo TFLM_SOURCES_FAILED)
ifneq ($(filter TFLM_SOURCES_FAILED,$(TFLM_SRCS)),)
$(error python3 $(TFLM_SOURCES_PY) could not select TFLM sources for $(TFLM_OPS) in $(TFLM_DIR) (message above))
endif
# The platform hooks (debug log, clock, target setup) come from nonn_tflm_port.cc: TFLM's
# cortex_m_generic timer reads the DWT cycle counter, which QEMU does not emulate.
TFLM_SRCS := $(filter-out %/cortex_m_generic/debug_log.cc %/cortex_m_generic/micro_time.cc \
  %/micro/debug_log.cc %/micro/micro_time.cc %/micro/system_setup.cc,$(TFLM_SRCS))
CORE_SRCS := $(filter %.cc,$(TFLM_SRCS))
CMSIS_SRCS := $(filter %.c,$(TFLM_SRCS))
LIB_OBJS := $(patsubst $(TFLM_DIR)/%.cc,$(BUILD)/tflm/%.o,$(CORE_SRCS)) \
  $(patsubst $(TFLM_DIR)/%.c,$(BUILD)/tflm/%.o,$(CMSIS_SRCS))
TFLM_LIB ?= $(BUILD)/libtflm.a

$(BUILD)/libtflm.a: $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/tflm/tensorflow/lite/micro/kernels/%.o: $(TFLM_DIR)/tensorflow/lite/micro/kernels/%.cc
	@mkdir -p $(@D)
	$(CXX) $(CXX_FLAGS) $(KERNEL_OPT) -c $< -o $@
$(BUILD)/tflm/%.o: $(TFLM_DIR)/%.cc
	@mkdir -p $(@D)
	$(CXX) $(CXX_FLAGS) $(CORE_OPT) -c $< -o $@
$(BUILD)/tflm/%.o: $(TFLM_DIR)/%.c
	@mkdir -p $(@D)
	$(CC) $(C_FLAGS) $(KERNEL_OPT) -c $< -o $@

# -- link: newlib-nano, semihosting (librdimon), our own startup -------------------------------
LD_FLAGS := $(ARCH_FLAGS) --specs=nano.specs --specs=rdimon.specs -nostartfiles \
  -Wl,--gc-sections -Wl,--no-warn-rwx-segments
LD_LIBS := -Wl,--start-group -lstdc++_nano -lsupc++_nano -lm -lc_nano -lrdimon -lgcc -Wl,--end-group

QEMU ?= qemu-system-arm
QEMU_FLAGS := -M $(MACHINE) -nographic -monitor none -serial none \
  -semihosting-config enable=on,target=native -icount shift=0
