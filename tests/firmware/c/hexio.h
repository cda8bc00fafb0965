/* Hex line I/O shared by the test drivers (tests only). */
#ifndef HEXIO_H
#define HEXIO_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Parse hex (or "-" for empty) into out; returns the byte count or -1. */
static long hex_decode(const char *hex, uint8_t *out, size_t cap) {
  size_t n = strlen(hex), i;
  if (strcmp(hex, "-") == 0) return 0;
  if (n % 2 != 0 || n / 2 > cap) return -1;
  for (i = 0; i < n / 2; ++i) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  return (long)(n / 2);
}

static void hex_print(const void *data, size_t n) {
  const uint8_t *p = (const uint8_t *)data;
  size_t i;
  if (n == 0) fputs("-", stdout);
  for (i = 0; i < n; ++i) printf("%02x", p[i]);
}

#endif
