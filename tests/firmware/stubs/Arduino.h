// Stub of the Arduino-ESP32 2.0 core API used by the generated firmware (declarations only).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

typedef uint8_t byte;
unsigned long millis();
void delay(unsigned long ms);

class String {
 public:
  const char* c_str() const;
};

class HardwareSerial {
 public:
  void begin(unsigned long baud);
  size_t printf(const char* format, ...) __attribute__((format(printf, 2, 3)));
  size_t print(char c);
  size_t print(const char* s);
  size_t println(const char* s);
};
extern HardwareSerial Serial;
