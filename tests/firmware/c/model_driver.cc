// Writes a generated model array back out and reports its constants (tests only).
// Built with -DMODEL_HEADER='"student_0_model_data.h"' -DMODEL=g_student_0_model_data.
//   model_driver dump OUT   -> "<size> <crc32 constant> <address % 16>", bytes to OUT
//   model_driver boot       -> nonn_boot_check_model's message; exit 0 ok, 3 refused
// With -DNONN_WITH_RUNNER, linked with nonn_model_runner.cc and a real TFLM library:
//   model_driver infer      -> "READY <arena used> <arena size>", then for every stdin line of
//                              hex int8 input, one line of hex int8 output (exit 3 refused)
//   model_driver corrupt I  -> starts from a copy with byte I flipped: the runner's message,
//                              exit 3 when it refuses
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include MODEL_HEADER
#include "nonn_crc32.h"
#ifdef NONN_WITH_RUNNER
#include "nonn_config.h"
#include "nonn_model_runner.h"
#endif

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

#ifdef NONN_WITH_RUNNER
static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int infer() {
  char msg[256];
  if (nonn_model_begin(msg, sizeof msg) != 0) {
    std::printf("REFUSED %s\n", msg);
    return 3;
  }
  std::printf("READY %lu %lu\n", static_cast<unsigned long>(nonn_model_arena_used()),
              static_cast<unsigned long>(nonn_model_arena_size()));
  std::vector<char> line(2 * NONN_INPUT_BYTES + 16);
  while (std::fgets(line.data(), static_cast<int>(line.size()), stdin) != nullptr) {
    int8_t* in = nonn_model_input();
    for (size_t i = 0; i < NONN_INPUT_BYTES; ++i) {
      int hi = hex_value(line[2 * i]), lo = hex_value(line[2 * i + 1]);
      if (hi < 0 || lo < 0) {
        std::printf("ERR bad input line\n");
        return 2;
      }
      in[i] = static_cast<int8_t>(static_cast<uint8_t>(hi * 16 + lo));
    }
    if (nonn_model_invoke() != 0) {
      std::printf("ERR invoke\n");
      return 1;
    }
    const int8_t* out = nonn_model_output();
    for (size_t i = 0; i < NONN_FEATURE_WIDTH; ++i) {
      std::printf("%02x", static_cast<unsigned>(static_cast<uint8_t>(out[i])));
    }
    std::printf("\n");
  }
  return 0;
}

static int corrupt(long index) {
  std::vector<unsigned char> copy(MODEL, MODEL + CAT(MODEL, _size));
  copy[static_cast<size_t>(index) % copy.size()] ^= 0x01u;
  char msg[256];
  int rc = nonn_model_begin_from(copy.data(), copy.size(),
                                 static_cast<uint32_t>(CAT(MODEL, _crc32)), msg, sizeof msg);
  std::printf("%s\n", msg);
  return rc == 0 ? 0 : 3;
}
#endif

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "dump") == 0) {
    std::FILE* f = std::fopen(argv[2], "wb");
    if (f == nullptr) return 2;
    std::fwrite(MODEL, 1, CAT(MODEL, _size), f);
    std::fclose(f);
    std::printf("%u %lu %lu\n", CAT(MODEL, _size), static_cast<unsigned long>(CAT(MODEL, _crc32)),
                static_cast<unsigned long>(reinterpret_cast<std::uintptr_t>(MODEL) % 16u));
    return 0;
  }
#ifdef NONN_WITH_RUNNER
  if (argc >= 2 && std::strcmp(argv[1], "infer") == 0) return infer();
  if (argc >= 3 && std::strcmp(argv[1], "corrupt") == 0) return corrupt(std::atol(argv[2]));
#endif
  char msg[256];
  int rc = nonn_boot_check_model(MODEL, CAT(MODEL, _size), CAT(MODEL, _crc32), msg, sizeof msg);
  std::printf("%s\n", msg);
  return rc == 0 ? 0 : 3;
}
