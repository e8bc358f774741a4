#include "planforge/c_api.h"

#include <string>

#include "planforge/manifest.hpp"
#include "planforge/sampling.hpp"

struct pf_manifest {
  planforge::Manifest value;
};
struct pf_sampler {
  planforge::Sampler value;
};

namespace {

thread_local std::string last_error;

template <typename Fn>
int guarded(Fn fn) {
  try {
    fn();
    last_error.clear();
    return PF_OK;
  } catch (const planforge::ManifestError& e) {
    last_error = e.what();
    return PF_MANIFEST_ERROR;
  } catch (const planforge::InvalidGenerationConfigError& e) {
    last_error = e.what();
    return PF_INVALID_CONFIG;
  } catch (const std::invalid_argument& e) {
    last_error = e.what();
    return PF_INVALID_ARGUMENT;
  } catch (const std::exception& e) {
    last_error = e.what();
    return PF_INTERNAL_ERROR;
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

}  // extern "C"
