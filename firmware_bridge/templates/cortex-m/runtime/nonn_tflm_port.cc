// TFLM's platform hooks for these projects: DebugLog to semihosting stderr and a tick clock
// from SysTick (TFLM's cortex_m_generic micro_time.cc reads the DWT counter, which QEMU does
// not emulate).
#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include "nonn_platform.h"
#include "tensorflow/lite/micro/micro_time.h"

extern "C" void DebugLog(const char* format, va_list args) { vfprintf(stderr, format, args); }

extern "C" int DebugVsnprintf(char* buffer, size_t buf_size, const char* format,
                              va_list vlist) {
  return vsnprintf(buffer, buf_size, format, vlist);
}

namespace tflite {
uint32_t ticks_per_second() { return NONN_CPU_HZ; }
uint32_t GetCurrentTimeTicks() { return static_cast<uint32_t>(nonn_ticks()); }
void InitializeTarget() {}
}  // namespace tflite
