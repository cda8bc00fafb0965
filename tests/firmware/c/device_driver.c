/* Drives a generated device project's frame handling (nonn_node.c + nonn_config.h), tests only.
 *   I hex              image frame -> OK seq ts input_hex | ERR reason
 *   P hex              camera pixels -> input_hex
 *   F seq ts hex [session]  model output -> feature frame hex | ERR reason
 *   H hash             set the spec's model hash (CRC-32 of the .tflite; 0 until set)
 *   R seq ts           replay guard -> 1 accepted | 0 dropped
 *   Q                  -> deployment id, its CRC-32 recomputed from the name, node, topics */
#include <inttypes.h>
#include <stdlib.h>

#include "hexio.h"
#include "nonn_config.h"
#include "nonn_crc32.h"
#include "nonn_node.h"

static char line[400000];
static uint8_t buf[140000];
static int8_t input[NONN_INPUT_BYTES];
static uint8_t out[NONN_HEADER_SIZE + NONN_FEATURE_WIDTH];

int main(void) {
  nonn_device_spec spec = {NONN_DEPLOYMENT_ID, NONN_STUDENT_ID, NONN_INPUT_BYTES,
                           NONN_INPUT_SCALE, NONN_INPUT_ZERO_POINT, NONN_OUTPUT_SCALE,
                           NONN_OUTPUT_ZERO_POINT, 0u};
  nonn_replay_guard guard = {0, 0, 0};
  while (fgets(line, sizeof line, stdin) != NULL) {
    char *tok = strtok(line, " \n");
    if (tok == NULL) continue;
    if (strcmp(tok, "I") == 0) {
      long n = hex_decode(strtok(NULL, " \n"), buf, sizeof buf);
      nonn_header h;
      nonn_status st = nonn_image_to_input(&spec, buf, (size_t)n, input, &h);
      if (st != NONN_OK) {
        printf("ERR %s\n", nonn_status_str(st));
        continue;
      }
      printf("OK %" PRIu32 " %" PRIu64 " ", h.seq, h.timestamp_us);
      hex_print(input, sizeof input);
      printf("\n");
    } else if (strcmp(tok, "P") == 0) {
      hex_decode(strtok(NULL, " \n"), buf, sizeof buf);
      nonn_pixels_to_input(&spec, buf, input);
      hex_print(input, sizeof input);
      printf("\n");
    } else if (strcmp(tok, "F") == 0) {
      nonn_header image;
      long n;
      memset(&image, 0, sizeof image);
      image.seq = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      image.timestamp_us = (uint64_t)strtoull(strtok(NULL, " "), NULL, 10);
      n = hex_decode(strtok(NULL, " \n"), buf, sizeof buf);
      tok = strtok(NULL, " \n");
      if (tok != NULL) image.session = (uint32_t)strtoul(tok, NULL, 10);
      n = nonn_feature_frame(&spec, &image, (const int8_t *)buf, (size_t)n, out, sizeof out);
      if (n < 0) {
        printf("ERR %s\n", nonn_status_str((int)n));
        continue;
      }
      hex_print(out, (size_t)n);
      printf("\n");
    } else if (strcmp(tok, "H") == 0) {
      spec.model_hash = (uint32_t)strtoul(strtok(NULL, " \n"), NULL, 10);
    } else if (strcmp(tok, "R") == 0) {
      uint32_t seq = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      uint64_t ts = (uint64_t)strtoull(strtok(NULL, " \n"), NULL, 10);
      printf("%d\n", nonn_replay_accept(&guard, seq, ts));
    } else if (strcmp(tok, "Q") == 0) {
      printf("%lu %lu %s %s %s %s\n", (unsigned long)NONN_DEPLOYMENT_ID,
             (unsigned long)nonn_crc32(NONN_DEPLOYMENT_NAME, strlen(NONN_DEPLOYMENT_NAME)),
             NONN_NODE_NAME, NONN_TOPIC_IMAGE, NONN_TOPIC_FEATURE, NONN_TOPIC_STATUS);
    }
    fflush(stdout);
  }
  return 0;
}
