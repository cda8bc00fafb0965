// Stub of ESP-IDF 4.4's esp_random.h (Arduino-ESP32 2.0) as used by the generated firmware
// (declarations only).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
uint32_t esp_random(void);
#ifdef __cplusplus
}
#endif
