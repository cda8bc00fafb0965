# The measure probe: tflm.mk's library + probe.cc + startup, linked for one machine.
RUNTIME_DIR ?= $(dir $(lastword $(MAKEFILE_LIST)))
include $(RUNTIME_DIR)tflm.mk
CPU_HZ_cortex-m4 := 25000000u
CPU_HZ_cortex-m7 := 25000000u
CPU_HZ_cortex-m55 := 32000000u
APP_FLAGS := -DNONN_CPU_HZ=$(CPU_HZ_$(CPU)) -I$(RUNTIME_DIR) -I$(BUILD) -O2

$(BUILD)/probe.elf: $(RUNTIME_DIR)probe.cc $(RUNTIME_DIR)startup.c $(RUNTIME_DIR)nonn_tflm_port.cc $(BUILD)/probe_ops.h $(TFLM_LIB)
	$(CXX) $(CXX_FLAGS) $(APP_FLAGS) -c $(RUNTIME_DIR)probe.cc -o $(BUILD)/probe.o
	$(CXX) $(CXX_FLAGS) $(APP_FLAGS) -c $(RUNTIME_DIR)nonn_tflm_port.cc -o $(BUILD)/port.o
	$(CC) $(C_FLAGS) $(APP_FLAGS) -c $(RUNTIME_DIR)startup.c -o $(BUILD)/startup.o
	$(CXX) $(LD_FLAGS) -T$(RUNTIME_DIR)$(MACHINE).ld -L$(RUNTIME_DIR) -Wl,-Map=$(BUILD)/probe.map \
	  $(BUILD)/startup.o $(BUILD)/probe.o $(BUILD)/port.o $(TFLM_LIB) $(LD_LIBS) -o $@
