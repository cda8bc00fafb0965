/* Drives a generated fusion project (fusion_model.c + fusion_runner.c), tests only.
 *   V hex          fusion input -> logits hex (nonn_fusion_invoke)
 *   F now hex      feature frame -> N count frame_hex... | ERR reason
 *   T now          deadline poll -> N count frame_hex...
 *   U now node payload   status/<node> message ('-' for an empty payload) -> N count frame_hex...
 *   S              counters
 * The first output line is "INIT rc message" from nonn_fusion_node_init. */
#include <inttypes.h>
#include <stdlib.h>

#include "fusion_runner.h"
#include "hexio.h"

static char line[400000];
static uint8_t buf[140000];
static nonn_fusion_node node;

static void print_predictions(const nonn_prediction *p, int n) {
  int i;
  printf("N %d", n);
  for (i = 0; i < n; ++i) {
    printf(" ");
    hex_print(p[i].bytes, p[i].len);
  }
  printf("\n");
}

int main(void) {
  char msg[256];
  int rc = nonn_fusion_node_init(&node, msg, sizeof msg);
  printf("INIT %d %s\n", rc, msg);
  while (fgets(line, sizeof line, stdin) != NULL) {
    char *tok = strtok(line, " \n");
    if (tok == NULL) continue;
    if (strcmp(tok, "V") == 0) {
      int8_t logits[NONN_FUSION_OUTPUT_WIDTH];
      hex_decode(strtok(NULL, " \n"), buf, sizeof buf);
      nonn_fusion_invoke((const int8_t *)buf, logits);
      hex_print(logits, sizeof logits);
      printf("\n");
    } else if (strcmp(tok, "F") == 0) {
      nonn_prediction out[2];
      uint32_t now = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      long n = hex_decode(strtok(NULL, " \n"), buf, sizeof buf);
      int produced = nonn_fusion_node_feed(&node, buf, (size_t)n, now, out);
      if (produced < 0) {
        printf("ERR %s\n", nonn_status_str(produced));
      } else {
        print_predictions(out, produced);
      }
    } else if (strcmp(tok, "T") == 0) {
      nonn_prediction out[NONN_FUSION_SLOTS];
      uint32_t now = (uint32_t)strtoul(strtok(NULL, " \n"), NULL, 10);
      print_predictions(out, nonn_fusion_node_poll(&node, now, out));
    } else if (strcmp(tok, "U") == 0) {
      nonn_prediction out[NONN_FUSION_SLOTS];
      uint32_t now = (uint32_t)strtoul(strtok(NULL, " "), NULL, 10);
      const char *name = strtok(NULL, " \n");
      const char *payload = strtok(NULL, " \n");
      size_t len = (payload == NULL || strcmp(payload, "-") == 0) ? 0 : strlen(payload);
      print_predictions(out, nonn_fusion_node_status(&node, name, (const uint8_t *)payload, len,
                                                     now, out));
    } else if (strcmp(tok, "S") == 0) {
      const nonn_fusion_counters *c = &node.counters;
      printf("accepted=%" PRIu32 " rejected=%" PRIu32 " duplicate=%" PRIu32 " late=%" PRIu32
             " out_of_order=%" PRIu32 " complete=%" PRIu32 " partial=%" PRIu32
             " evicted=%" PRIu32 " stale_model=%" PRIu32 " bad_status=%" PRIu32
             " offline=%" PRIx32 "\n", c->accepted, c->rejected, c->duplicate, c->late,
             c->out_of_order, c->complete, c->partial, c->evicted, c->stale_model, c->bad_status,
             node.offline);
    }
    fflush(stdout);
  }
  return 0;
}
