// Stub of Arduino-ESP32 2.0 WiFi.h as used by the generated firmware (declarations only).
#pragma once
#include "Arduino.h"

typedef enum { WL_IDLE_STATUS = 0, WL_CONNECTED = 3, WL_DISCONNECTED = 6 } wl_status_t;
typedef enum { WIFI_MODE_NULL = 0, WIFI_MODE_STA = 1 } wifi_mode_t;
#define WIFI_STA WIFI_MODE_STA

class IPAddress {
 public:
  String toString() const;
};

class WiFiClass {
 public:
  wl_status_t status();
  bool mode(wifi_mode_t mode);
  wl_status_t begin(const char* ssid, const char* passphrase = nullptr);
  IPAddress localIP();
};
extern WiFiClass WiFi;

class Client {
 public:
  virtual ~Client();
};
class WiFiClient : public Client {};
