// Stub of knolleary/PubSubClient 2.8 as used by the generated firmware (declarations only).
#pragma once
#include <functional>

#include "Arduino.h"
#include "WiFi.h"

#ifndef MQTT_MAX_PACKET_SIZE
#define MQTT_MAX_PACKET_SIZE 256
#endif
#define MQTT_CALLBACK_SIGNATURE std::function<void(char*, uint8_t*, unsigned int)> callback

class PubSubClient {
 public:
  explicit PubSubClient(Client& client);
  PubSubClient& setServer(const char* domain, uint16_t port);
  PubSubClient& setCallback(MQTT_CALLBACK_SIGNATURE);
  bool setBufferSize(uint16_t size);
  bool connect(const char* id, const char* willTopic, uint8_t willQos, bool willRetain,
               const char* willMessage);
  bool connected();
  int state();
  bool loop();
  bool publish(const char* topic, const char* payload, bool retained);
  bool publish(const char* topic, const uint8_t* payload, unsigned int plength);
  bool subscribe(const char* topic, uint8_t qos);
};
