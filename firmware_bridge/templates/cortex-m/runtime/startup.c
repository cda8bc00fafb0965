/* Vector table, reset handler and SysTick counter for the nonn-tflite Cortex-M projects.
 * Reset: enable the FPU/MVE (Cortex-M55), copy .data from flash, zero .bss, start newlib's
 * semihosting stdio (librdimon), run C++ constructors, call main() and exit with its status. */
#include <stdint.h>
#include <stdio.h>

#include "nonn_platform.h"

extern uint32_t __stack_top, __data_load, __data_start, __data_end, __bss_start__, __bss_end__;
extern int main(void);
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);

void Reset_Handler(void);
void SysTick_Handler(void);
static void Fault_Handler(void);

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SYST_MAX 0x00FFFFFFu

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&__stack_top), Reset_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, 0, 0, 0, Fault_Handler,
    Fault_Handler, 0, Fault_Handler, SysTick_Handler};

/* newlib calls these from __libc_init_array / exit; crti is not linked (-nostartfiles). */
void _init(void) {}
void _fini(void) {}

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

void nonn_counter_start(void) {
  SYST_CSR = 0;
  systick_wraps = 0;
  SYST_RVR = SYST_MAX;
  SYST_CVR = 0;
  SYST_CSR = 7; /* core clock, interrupt on wrap, enabled */
}

uint64_t nonn_ticks(void) {
  uint32_t wraps, value;
  do {
    wraps = systick_wraps;
    value = SYST_CVR;
  } while (wraps != systick_wraps);
  return (uint64_t)wraps * (SYST_MAX + 1u) + (SYST_MAX - value);
}

const char *nonn_u64(uint64_t v, char *buf) {
  char tmp[21];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + (int)(v % 10u));
    v /= 10u;
  } while (v);
  for (int i = 0; i < n; ++i) buf[i] = tmp[n - 1 - i];
  buf[n] = 0;
  return buf;
}

static int semihost(int op, void *arg) {
  register int r0 __asm__("r0") = op;
  register void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

void nonn_exit(int code) {
  fflush(stdout);
  fflush(stderr);
  uint32_t block[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
  semihost(0x20 /* SYS_EXIT_EXTENDED */, block);
  for (;;) {
  }
}

static void Fault_Handler(void) {
  semihost(0x04 /* SYS_WRITE0 */, (void *)"nonn: hard fault\n");
  uint32_t block[2] = {0x20026u, 3u};
  semihost(0x20, block);
  for (;;) {
  }
}

void Reset_Handler(void) {
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
  SCB_CPACR |= 0xFu << 20; /* CP10, CP11 full access: FPU and MVE */
  __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
  for (uint32_t *src = &__data_load, *dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
  for (uint32_t *dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
  initialise_monitor_handles();
  __libc_init_array();
  nonn_exit(main());
}
