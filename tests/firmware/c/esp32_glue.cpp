// Runs a generated ESP32 main.cpp on the host (tests only): definitions for the API-shaped
// stubs in ../stubs (Arduino, WiFi, PubSubClient) that stand in for the board, the radio and
// the broker, so the glue's MQTT handling is exercised, not only syntax-checked. The model
// code under it is the real generated C. Nothing here says anything about the real libraries.
//   M now topic hex    an MQTT message arrives ('-' for an empty payload): the callback runs
//   L now              one loop() at time now (ms)
// Output: "SUB topic qos" per subscription, "PUB topic hex" per publish, Serial's text as is.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "Arduino.h"
#include "PubSubClient.h"
#include "WiFi.h"

extern "C" {
#include "hexio.h"
}

void setup();
void loop();

namespace {
unsigned long g_now = 0;
bool g_connected = false;
MQTT_CALLBACK_SIGNATURE;
char g_line[400000];
uint8_t g_payload[140000];
char g_hex[280001];
}  // namespace

unsigned long millis() { return g_now; }
void delay(unsigned long ms) { g_now += ms; }

const char* String::c_str() const { return "127.0.0.1"; }
HardwareSerial Serial;
void HardwareSerial::begin(unsigned long) {}
size_t HardwareSerial::printf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  int n = std::vprintf(format, args);
  va_end(args);
  return n < 0 ? 0 : static_cast<size_t>(n);
}
size_t HardwareSerial::print(char c) { return std::printf("%c", c); }
size_t HardwareSerial::print(const char* s) { return std::printf("%s", s); }
size_t HardwareSerial::println(const char* s) { return std::printf("%s\n", s); }

WiFiClass WiFi;
String IPAddress::toString() const { return String(); }
wl_status_t WiFiClass::status() { return WL_CONNECTED; }
bool WiFiClass::mode(wifi_mode_t) { return true; }
wl_status_t WiFiClass::begin(const char*, const char*) { return WL_CONNECTED; }
IPAddress WiFiClass::localIP() { return IPAddress(); }
Client::~Client() {}

PubSubClient::PubSubClient(Client&) {}
PubSubClient& PubSubClient::setServer(const char*, uint16_t) { return *this; }
PubSubClient& PubSubClient::setCallback(std::function<void(char*, uint8_t*, unsigned int)> cb) {
  callback = cb;
  return *this;
}
bool PubSubClient::setBufferSize(uint16_t) { return true; }
bool PubSubClient::connect(const char*, const char*, uint8_t, bool, const char*) {
  g_connected = true;
  return true;
}
bool PubSubClient::connected() { return g_connected; }
int PubSubClient::state() { return 0; }
bool PubSubClient::loop() { return true; }
bool PubSubClient::publish(const char* topic, const char* payload, bool) {
  return publish(topic, reinterpret_cast<const uint8_t*>(payload),
                 static_cast<unsigned int>(std::strlen(payload)));
}
bool PubSubClient::publish(const char* topic, const uint8_t* payload, unsigned int plength) {
  std::printf("PUB %s ", topic);
  hex_print(payload, plength);
  std::printf("\n");
  return true;
}
bool PubSubClient::subscribe(const char* topic, uint8_t qos) {
  std::printf("SUB %s %u\n", topic, static_cast<unsigned>(qos));
  return true;
}

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  setup();
  loop();  // joins WiFi and the broker: subscriptions and status go out
  while (std::fgets(g_line, sizeof g_line, stdin) != nullptr) {
    char kind = 0, topic[256] = {0};
    unsigned long now = 0;
    if (std::sscanf(g_line, "M %lu %255s %280000s", &now, topic, g_hex) == 3) {
      long n = hex_decode(g_hex, g_payload, sizeof g_payload);
      if (n < 0) return 2;
      g_now = now;
      callback(topic, g_payload, static_cast<unsigned int>(n));
    } else if (std::sscanf(g_line, "%c %lu", &kind, &now) == 2 && kind == 'L') {
      g_now = now;
      loop();
    }
  }
  return 0;
}
