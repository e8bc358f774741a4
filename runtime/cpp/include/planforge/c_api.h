/* planforge's C API over the C++ runtime core, for other languages. Every call returns PF_OK or an error
 * code; pf_last_error() is that thread's one-line message. */
#ifndef PLANFORGE_C_API_H
#define PLANFORGE_C_API_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum pf_status {
  PF_OK = 0,
  PF_MANIFEST_ERROR = 1,        /* a missing or corrupt planforge.json */
  PF_INVALID_CONFIG = 2,        /* a sampling or generation setting out of range */
  PF_INVALID_ARGUMENT = 3,      /* a null pointer or a size that does not fit */
  PF_INTERNAL_ERROR = 4,
};

typedef struct pf_manifest pf_manifest;
typedef struct pf_sampler pf_sampler;

const char* pf_last_error(void);

int pf_manifest_load(const char* model_dir, pf_manifest** out);
int pf_manifest_dims(const pf_manifest* m, int* num_layers, int* vocab_size, int* max_seq_len);
void pf_manifest_free(pf_manifest* m);

/* has_seed 0: seeded from the OS. */
int pf_sampler_new(int do_sample, double temperature, int top_k, double top_p, int has_seed, uint64_t seed,
                   pf_sampler** out);
/* logits: batch x vocab float32, row-major; tokens: batch int64. */
int pf_sampler_sample(pf_sampler* s, const float* logits, int batch, int vocab, int64_t* tokens);
void pf_sampler_free(pf_sampler* s);

#ifdef __cplusplus
}
#endif

#endif
