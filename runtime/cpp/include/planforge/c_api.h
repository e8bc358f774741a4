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
  PF_ENGINE_ERROR = 5,          /* an engine directory that is missing its engine, or holds none */
  PF_ENGINE_MISMATCH = 6,       /* built with another TensorRT or for another GPU, needs Python plugins, or corrupt */
  PF_PLUGIN_MISMATCH = 7,       /* a plugin op or op version this runtime does not have */
  PF_PROMPT_TOO_LONG = 8,       /* beyond the cache or the engine's profile */
  PF_INVALID_PROMPT = 9,        /* empty, or token ids outside the vocabulary */
  PF_BACKEND_UNAVAILABLE = 10,  /* this build has no TensorRT, or the machine lacks it (or ONNX Runtime) */
  PF_CANCELLED = 11,            /* the token callback asked to stop */
};

typedef struct pf_manifest pf_manifest;
typedef struct pf_sampler pf_sampler;
typedef struct pf_runtime pf_runtime;
/* Returns 0 to go on; anything else stops the generation, which then returns PF_CANCELLED. */
typedef int (*pf_token_callback)(int row, int64_t token, void* user_data);

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

/* A TensorRT engine directory (planforge build --target tensorrt), checked before TensorRT reads it, or a model
 * lowered onto ONNX Runtime (planforge optimize, the default --target onnxruntime). */
int pf_runtime_open(const char* engine_dir, pf_runtime** out);
/* pf_runtime_open with ONNX Runtime's intra-op threads (0: its default) and the libonnxruntime.so to load (null:
 * $PLANFORGE_ONNXRUNTIME_LIBRARY, else the loader's search path). */
int pf_runtime_open_with(const char* model_dir, int threads, const char* onnxruntime_library, pf_runtime** out);
/* n_prompts prompts, concatenated in prompt_ids, lengths[i] tokens each; sampling as pf_sampler_new; stop_ids
 * (n_stop of them) end a row besides the model's EOS (which ignore_eos 1 drops). tokens_out: n_prompts x max_new_tokens, counts_out[i] of
 * row i filled. on_token (may be null) sees every token as it is picked, and may stop the generation. */
int pf_runtime_generate(pf_runtime* rt, const int64_t* prompt_ids, const int* lengths, int n_prompts,
                        int max_new_tokens, int do_sample, double temperature, int top_k, double top_p, int has_seed,
                        uint64_t seed, const int64_t* stop_ids, int n_stop, int ignore_eos,
                        pf_token_callback on_token, void* user_data, int64_t* tokens_out, int* counts_out);
/* Of the last pf_runtime_generate: row's finish reason ("stop", "length" or "max_seq_len"; valid until the next
 * call), and the prefill's and the decode's wall time. */
int pf_runtime_last_result(const pf_runtime* rt, int row, const char** finish_reason, double* prefill_seconds,
                           double* decode_seconds);
void pf_runtime_free(pf_runtime* rt);

/* The plugin op versions this runtime accepts in an engine: the version of op "planforge::Name", 0 if none. */
int pf_plugin_op_version(const char* name);
int pf_plugin_op_count(void);
/* 1 if this library was built with the TensorRT backend (-DPLANFORGE_TENSORRT=ON). */
int pf_tensorrt_compiled_in(void);

#ifdef __cplusplus
}
#endif

#endif
