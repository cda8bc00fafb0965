/* Bare-metal platform layer of the nonn-tflite Cortex-M projects: instruction counting with
 * SysTick, and semihosting exit with a status. Part of nonn-tflite (firmware_bridge). */
#ifndef NONN_PLATFORM_H
#define NONN_PLATFORM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Core clock the SysTick counts (QEMU: 25 MHz on mps2-an386/an500, 32 MHz on mps3-an547). */
#ifndef NONN_CPU_HZ
#define NONN_CPU_HZ 25000000u
#endif

/* Start SysTick from the core clock, free-running; wraps are counted in its interrupt. */
void nonn_counter_start(void);
/* Core clock ticks since nonn_counter_start(). Under QEMU's `-icount shift=0` one instruction
 * is 1 ns of virtual time, so instructions = ticks * 1e9 / NONN_CPU_HZ. On a real board these
 * are cycles. */
uint64_t nonn_ticks(void);
/* Decimal text of v in buf (at least 21 bytes); newlib-nano's printf has no %llu. */
const char *nonn_u64(uint64_t v, char *buf);
/* Ends the program: QEMU exits with `code` (semihosting SYS_EXIT_EXTENDED); on a board without
 * a debugger attached it halts in a loop. */
void nonn_exit(int code) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif /* NONN_PLATFORM_H */
