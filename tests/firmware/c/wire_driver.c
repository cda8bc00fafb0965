/* Drives nonn_wire.c from stdin lines (tests only).
 *   N                                   structure-only decoding (no decoder)
 *   C dep image_size num_classes max_payload k w0 .. w(k-1)   decoder (k = 0: any student)
 *   I k scalebits zp model check        student k's identity (stale_model check from now on)
 *   D expect hex                        -> OK ver type student dtype dep session seq model ts scalebits zp len payload | ERR reason
 *   E type student dtype dep session seq model ts scalebits zp payload   -> frame hex | ERR reason */
#include <inttypes.h>
#include <stdlib.h>

#include "hexio.h"
#include "nonn_wire.h"

static char line[400000];
static uint8_t buf[140000];
static uint8_t out[140000];
static uint16_t widths[256];
static nonn_feature_identity identities[256];

int main(void) {
  nonn_decoder dec;
  int have_decoder = 0;
  memset(&dec, 0, sizeof dec);
  while (fgets(line, sizeof line, stdin) != NULL) {
    char *tok = strtok(line, " \n");
    if (tok == NULL) continue;
    if (strcmp(tok, "N") == 0) {
      have_decoder = 0;
    } else if (strcmp(tok, "C") == 0) {
      int k, i;
      memset(&dec, 0, sizeof dec);
      dec.deployment_id = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      dec.image_size = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      dec.num_classes = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      dec.max_payload = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      k = atoi(strtok(NULL, " \n"));
      for (i = 0; i < k; ++i) widths[i] = (uint16_t)atoi(strtok(NULL, " \n"));
      dec.feature_widths = k > 0 ? widths : NULL;
      dec.num_students = (uint8_t)k;
      have_decoder = 1;
    } else if (strcmp(tok, "I") == 0) {
      int k = atoi(strtok(NULL, " "));
      uint32_t bits = (uint32_t)strtoul(strtok(NULL, " "), NULL, 16);
      memcpy(&identities[k].scale, &bits, 4);
      identities[k].zero_point = (int32_t)strtol(strtok(NULL, " "), NULL, 10);
      identities[k].model = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      identities[k].check_model = (uint8_t)atoi(strtok(NULL, " \n"));
      dec.identities = identities;
    } else if (strcmp(tok, "D") == 0) {
      int expect = atoi(strtok(NULL, " "));
      long n = hex_decode(strtok(NULL, " \n"), buf, sizeof buf);
      nonn_header h;
      const uint8_t *payload = NULL;
      uint32_t bits;
      nonn_status st = nonn_decode_for(have_decoder ? &dec : NULL, buf, (size_t)n, expect, &h,
                                       &payload);
      if (st != NONN_OK) {
        printf("ERR %s\n", nonn_status_str(st));
        continue;
      }
      memcpy(&bits, &h.scale, 4);
      printf("OK %u %u %u %u %" PRIu32 " %" PRIu32 " %" PRIu32 " %" PRIu32 " %" PRIu64
             " %08" PRIx32 " %" PRId32 " %" PRIu32 " ", h.version, h.msg_type, h.student,
             h.dtype, h.deployment_id, h.session, h.seq, h.model, h.timestamp_us, bits,
             h.zero_point, h.length);
      hex_print(payload, h.length);
      printf("\n");
    } else if (strcmp(tok, "E") == 0) {
      nonn_header h;
      uint32_t bits;
      long n;
      memset(&h, 0, sizeof h);
      h.msg_type = (uint8_t)atoi(strtok(NULL, " "));
      h.student = (uint8_t)atoi(strtok(NULL, " "));
      h.dtype = (uint8_t)atoi(strtok(NULL, " "));
      h.deployment_id = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      h.session = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      h.seq = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      h.model = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      h.timestamp_us = (uint64_t)strtoull(strtok(NULL, " "), NULL, 10);
      bits = (uint32_t)strtoul(strtok(NULL, " "), NULL, 16);
      memcpy(&h.scale, &bits, 4);
      h.zero_point = (int32_t)strtol(strtok(NULL, " "), NULL, 10);
      n = hex_decode(strtok(NULL, " \n"), buf, sizeof buf);
      h.length = (uint32_t)n;
      n = nonn_encode(&h, buf, out, sizeof out);
      if (n < 0) {
        printf("ERR %s\n", nonn_status_str((int)n));
        continue;
      }
      hex_print(out, (size_t)n);
      printf("\n");
    }
    fflush(stdout);
  }
  return 0;
}
