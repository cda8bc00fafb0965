// nonn-tflite measure probe: one prebuilt program per (CPU, kernels) that runs any model the
// toolkit makes, read through semihosting, so measuring a new model needs no rebuild.
//
// Reads probe_model.tflite and probe_input.bin (N samples of the input tensor's bytes) from
// QEMU's working directory, writes probe_output.bin (N samples of the output tensor's bytes)
// and prints one line per fact: "nonn-probe arena_used=...", "nonn-probe invoke=<i>
// ticks=<t>". Exit status: 0 ok, 2 bad input files, 1 TFLM refused the model, 4 the arena
// given in probe_arena.txt is too small.
#include <cstdio>
#include <cstring>

#include "nonn_platform.h"
#include "probe_ops.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/schema/schema_generated.h"

#ifndef PROBE_MODEL_MAX
#define PROBE_MODEL_MAX (1024 * 1024)
#endif
#ifndef PROBE_ARENA
#define PROBE_ARENA (768 * 1024)
#endif

__attribute__((section(".bigram"), aligned(16))) static unsigned char g_model[PROBE_MODEL_MAX];
__attribute__((section(".bigram"), aligned(16))) static unsigned char g_arena[PROBE_ARENA];
__attribute__((section(".bigram"), aligned(16))) static unsigned char g_io[64 * 1024];

static long read_file(const char* name, unsigned char* buf, long cap) {
  FILE* f = fopen(name, "rb");
  if (!f) return -1;
  long n = static_cast<long>(fread(buf, 1, cap, f));
  int more = fgetc(f) != EOF;
  fclose(f);
  return more ? -2 : n;
}

int main() {
  long model_size = read_file("probe_model.tflite", g_model, sizeof g_model);
  if (model_size <= 0) {
    printf("nonn-probe error=%s\n", model_size == -2 ? "model larger than PROBE_MODEL_MAX"
                                                      : "cannot read probe_model.tflite");
    return 2;
  }
  const tflite::Model* model = tflite::GetModel(g_model);
  static nonn::ProbeOpResolver resolver;
  if (nonn::RegisterProbeOps(resolver) != kTfLiteOk) return 1;
  // probe_arena.txt, if present: the arena size to try (measure bisects it for the minimum).
  size_t arena_size = sizeof g_arena;
  if (FILE* f = fopen("probe_arena.txt", "rb")) {
    unsigned long want = 0;
    if (fscanf(f, "%lu", &want) == 1 && want > 0 && want < arena_size) arena_size = want;
    fclose(f);
  }
  static tflite::MicroInterpreter interpreter(model, resolver, g_arena, arena_size);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    printf("nonn-probe arena_too_small=%u\n", static_cast<unsigned>(arena_size));
    return 4;
  }
  printf("nonn-probe arena_used=%u\n", static_cast<unsigned>(interpreter.arena_used_bytes()));
  TfLiteTensor* in = interpreter.input(0);
  TfLiteTensor* out = interpreter.output(0);
  FILE* inputs = fopen("probe_input.bin", "rb");
  FILE* outputs = fopen("probe_output.bin", "wb");
  if (!inputs || !outputs) {
    printf("nonn-probe error=cannot open probe_input.bin / probe_output.bin\n");
    return 2;
  }
  nonn_counter_start();
  for (int i = 0;; ++i) {
    size_t got = fread(in->data.raw, 1, in->bytes, inputs);
    if (got == 0) break;
    if (got != in->bytes) {
      printf("nonn-probe error=probe_input.bin is not a whole number of %u-byte inputs\n",
             static_cast<unsigned>(in->bytes));
      return 2;
    }
    uint64_t t0 = nonn_ticks();
    TfLiteStatus status = interpreter.Invoke();
    uint64_t t1 = nonn_ticks();
    if (status != kTfLiteOk) {
      printf("nonn-probe arena_too_small=%u\n", static_cast<unsigned>(arena_size));
      return 4;
    }
    fwrite(out->data.raw, 1, out->bytes, outputs);
    char ticks[24];
    printf("nonn-probe invoke=%d ticks=%s\n", i, nonn_u64(t1 - t0, ticks));
  }
  fclose(outputs);
  fclose(inputs);
  printf("nonn-probe done\n");
  return 0;
}
