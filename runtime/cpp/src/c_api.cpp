#include "planforge/c_api.h"

#include <string>

#include "planforge/manifest.hpp"
#include "planforge/runtime.hpp"
#include "planforge/sampling.hpp"

struct pf_manifest {
  planforge::Manifest value;
};
struct pf_sampler {
  planforge::Sampler value;
};
struct pf_runtime {
  planforge::Runtime value;
  planforge::GenerationResult last;  // the last pf_runtime_generate's finish reasons and timings
};

namespace {

thread_local std::string last_error;

// The token callback asked to stop.
class Cancelled : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The C API's code for each error class (the most derived class first: a subclass keeps its own code).
int status_of(const std::exception& e) {
  if (dynamic_cast<const planforge::ManifestError*>(&e)) return PF_MANIFEST_ERROR;
  if (dynamic_cast<const planforge::InvalidGenerationConfigError*>(&e)) return PF_INVALID_CONFIG;
  if (dynamic_cast<const planforge::EngineDirError*>(&e)) return PF_ENGINE_ERROR;
  if (dynamic_cast<const planforge::EngineMismatchError*>(&e)) return PF_ENGINE_MISMATCH;
  if (dynamic_cast<const planforge::PluginVersionError*>(&e)) return PF_PLUGIN_MISMATCH;
  if (dynamic_cast<const planforge::PromptTooLongError*>(&e)) return PF_PROMPT_TOO_LONG;
  if (dynamic_cast<const planforge::InvalidPromptError*>(&e)) return PF_INVALID_PROMPT;
  if (dynamic_cast<const planforge::BackendUnavailableError*>(&e)) return PF_BACKEND_UNAVAILABLE;
  if (dynamic_cast<const Cancelled*>(&e)) return PF_CANCELLED;
  if (dynamic_cast<const std::invalid_argument*>(&e)) return PF_INVALID_ARGUMENT;
  return PF_INTERNAL_ERROR;
}

template <typename Fn>
int guarded(Fn fn) {
  try {
    fn();
    last_error.clear();
    return PF_OK;
  } catch (const std::exception& e) {
    last_error = e.what();
    return status_of(e);
  }
}

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

extern "C" {

const char* pf_last_error(void) { return last_error.c_str(); }

int pf_manifest_load(const char* model_dir, pf_manifest** out) {
  return guarded([&] {
    require(model_dir != nullptr && out != nullptr, "pf_manifest_load: model_dir and out must not be null");
    *out = new pf_manifest{planforge::Manifest::load(model_dir)};
  });
}

int pf_manifest_dims(const pf_manifest* m, int* num_layers, int* vocab_size, int* max_seq_len) {
  return guarded([&] {
    require(m && num_layers && vocab_size && max_seq_len, "pf_manifest_dims: null argument");
    *num_layers = m->value.dims.num_layers;
    *vocab_size = m->value.dims.vocab_size;
    *max_seq_len = m->value.dims.max_seq_len;
  });
}

void pf_manifest_free(pf_manifest* m) { delete m; }

int pf_sampler_new(int do_sample, double temperature, int top_k, double top_p, int has_seed, uint64_t seed,
                   pf_sampler** out) {
  return guarded([&] {
    require(out != nullptr, "pf_sampler_new: out must not be null");
    planforge::SamplingConfig config;
    config.do_sample = do_sample != 0;
    config.temperature = temperature;
    config.top_k = top_k;
    config.top_p = top_p;
    if (has_seed) config.seed = seed;
    *out = new pf_sampler{planforge::Sampler(config)};
  });
}

int pf_sampler_sample(pf_sampler* s, const float* logits, int batch, int vocab, int64_t* tokens) {
  return guarded([&] {
    require(s && logits && tokens && batch > 0 && vocab > 0, "pf_sampler_sample: null argument or empty logits");
    const auto picked = s->value(logits, batch, vocab);
    for (int b = 0; b < batch; ++b) tokens[b] = picked[b];
  });
}

void pf_sampler_free(pf_sampler* s) { delete s; }

int pf_runtime_open(const char* engine_dir, pf_runtime** out) {
  return guarded([&] {
    require(engine_dir != nullptr && out != nullptr, "pf_runtime_open: engine_dir and out must not be null");
    *out = new pf_runtime{planforge::Runtime(engine_dir), {}};
  });
}

int pf_runtime_open_with(const char* model_dir, int threads, const char* onnxruntime_library, pf_runtime** out) {
  return guarded([&] {
    require(model_dir != nullptr && out != nullptr && threads >= 0,
            "pf_runtime_open_with: model_dir and out must not be null, threads >= 0");
    planforge::RuntimeOptions options;
    options.threads = threads;
    if (onnxruntime_library) options.onnxruntime_library = onnxruntime_library;
    *out = new pf_runtime{planforge::Runtime(model_dir, options), {}};
  });
}

int pf_runtime_generate(pf_runtime* rt, const int64_t* prompt_ids, const int* lengths, int n_prompts,
                        int max_new_tokens, int do_sample, double temperature, int top_k, double top_p, int has_seed,
                        uint64_t seed, const int64_t* stop_ids, int n_stop, int ignore_eos,
                        pf_token_callback on_token, void* user_data, int64_t* tokens_out, int* counts_out) {
  return guarded([&] {
    require(rt && prompt_ids && lengths && tokens_out && counts_out && n_prompts > 0 && max_new_tokens > 0 &&
                (n_stop == 0 || stop_ids),
            "pf_runtime_generate: null argument, no prompts, or max_new_tokens < 1");
    std::vector<std::vector<int64_t>> prompts;
    for (int i = 0, at = 0; i < n_prompts; at += lengths[i], ++i) {
      require(lengths[i] >= 0, "pf_runtime_generate: a negative prompt length");
      prompts.emplace_back(prompt_ids + at, prompt_ids + at + lengths[i]);
    }
    planforge::GenerationConfig config;
    config.max_new_tokens = max_new_tokens;
    config.sampling.do_sample = do_sample != 0;
    config.sampling.temperature = temperature;
    config.sampling.top_k = top_k;
    config.sampling.top_p = top_p;
    if (has_seed) config.sampling.seed = seed;
    config.stop_token_ids.assign(stop_ids, stop_ids + n_stop);
    config.ignore_eos = ignore_eos != 0;
    auto callback = [&](int row, int64_t token) {
      if (on_token && on_token(row, token, user_data) != 0) throw Cancelled("the token callback stopped the generation");
    };
    rt->last = rt->value.generate(prompts, config, callback);
    const auto& result = rt->last;
    for (int i = 0; i < n_prompts; ++i) {
      counts_out[i] = static_cast<int>(result.tokens[i].size());
      for (int t = 0; t < counts_out[i]; ++t) tokens_out[i * max_new_tokens + t] = result.tokens[i][t];
    }
  });
}

int pf_runtime_last_result(const pf_runtime* rt, int row, const char** finish_reason, double* prefill_seconds,
                           double* decode_seconds) {
  return guarded([&] {
    require(rt && finish_reason && prefill_seconds && decode_seconds && row >= 0 &&
                row < static_cast<int>(rt->last.finish_reasons.size()),
            "pf_runtime_last_result: null argument, or a row the last generation did not have");
    *finish_reason = rt->last.finish_reasons[row].c_str();
    *prefill_seconds = rt->last.prefill_seconds;
    *decode_seconds = rt->last.decode_seconds;
  });
}

void pf_runtime_free(pf_runtime* rt) { delete rt; }

int pf_plugin_op_version(const char* name) {
  if (name == nullptr) return 0;
  const auto& ops = planforge::known_plugin_ops();
  const auto it = ops.find(name);
  return it == ops.end() ? 0 : it->second;
}

int pf_plugin_op_count(void) { return static_cast<int>(planforge::known_plugin_ops().size()); }

int pf_tensorrt_compiled_in(void) { return planforge::tensorrt_compiled_in() ? 1 : 0; }

}  // extern "C"
