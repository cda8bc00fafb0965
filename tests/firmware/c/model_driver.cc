// Writes a generated model array back out and reports its constants (tests only).
// Built with -DMODEL_HEADER='"student_0_model_data.h"' -DMODEL=g_student_0_model_data.
//   model_driver dump OUT   -> "<size> <crc32 constant> <address % 16>", bytes to OUT
//   model_driver boot       -> nonn_boot_check_model's message; exit 0 ok, 3 refused
#include <cstdint>
#include <cstdio>
#include <cstring>

#include MODEL_HEADER
#include "nonn_crc32.h"

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

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
  char msg[256];
  int rc = nonn_boot_check_model(MODEL, CAT(MODEL, _size), CAT(MODEL, _crc32), msg, sizeof msg);
  std::printf("%s\n", msg);
  return rc == 0 ? 0 : 3;
}
