#include "planforge/manifest.hpp"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace planforge {
namespace {

using nlohmann::json;

int positive(const json& object, const char* key, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number_integer() || it->get<long long>() <= 0) {
    throw ManifestError(where + ": dims." + key + " must be a positive integer. Re-export the model.");
  }
  return it->get<int>();
}

}  // namespace

Manifest Manifest::parse(const std::string& json_text, const std::string& where) {
  try {
    return parse_checked(json_text, where);
  } catch (const nlohmann::json::exception& error) {  // a field of the wrong type
    throw ManifestError(where + ": " + error.what() + ". Re-export the model.");
  }
}

Manifest Manifest::parse_checked(const std::string& json_text, const std::string& where) {
  json data = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (data.is_discarded() || !data.is_object()) {
    throw ManifestError(where + " is not a JSON object. Re-export the model.");
  }
  auto dims = data.find("dims");
  if (dims == data.end() || !dims->is_object()) {
    throw ManifestError(where + " has no \"dims\" object. Re-export the model.");
  }
  Manifest m;
  m.dims = Dims{positive(*dims, "num_layers", where),   positive(*dims, "hidden_size", where),
                positive(*dims, "num_heads", where),    positive(*dims, "num_kv_heads", where),
                positive(*dims, "head_dim", where),     positive(*dims, "vocab_size", where),
                positive(*dims, "max_seq_len", where)};
  if (m.dims.num_heads % m.dims.num_kv_heads != 0) {
    throw ManifestError(where + ": dims.num_heads is not a multiple of dims.num_kv_heads. Re-export the model.");
  }
  m.target = data.value("target", std::string("onnxruntime"));
  m.dtype = data.value("dtype", std::string("fp32"));
  if (auto eos = data.find("eos_token_ids"); eos != data.end() && eos->is_array()) {
    for (const auto& id : *eos) m.eos_token_ids.push_back(id.get<int>());
  }
  if (auto pad = data.find("pad_token_id"); pad != data.end() && pad->is_number_integer()) m.pad_token_id = pad->get<int>();
  if (auto s = data.find("streaming"); s != data.end() && s->is_object() && s->contains("cache_slots")) {
    m.streaming_slots = (*s)["cache_slots"].get<int>();
  }
  auto io = data.find("io");
  if (io != data.end() && io->is_object()) m.shared_kv_buffers = io->value("past_present_share_buffer", false);
  if (io != data.end() && io->is_object() && io->contains("kv_cache")) {
    m.io_version = io->value("version", 0);
    for (const auto& layer : (*io)["kv_cache"]) {
      m.kv_cache.push_back({layer.at("capacity").get<int>(), layer.value("rolling", false), layer.value("sinks", 0)});
    }
    if (static_cast<int>(m.kv_cache.size()) != m.dims.num_layers) {
      throw ManifestError(where + ": io.kv_cache lists " + std::to_string(m.kv_cache.size()) + " layers for " +
                          std::to_string(m.dims.num_layers) + ". Rebuild the model with `planforge build`.");
    }
  }
  if (auto ops = data.find("plugin_ops"); ops != data.end() && ops->is_object()) {
    for (const auto& [name, version] : ops->items()) m.plugin_ops[name] = version.get<int>();
  }
  if (auto trt = data.find("tensorrt"); trt != data.end() && trt->is_object()) {
    EngineInfo e;
    e.engine_file = trt->value("engine", std::string("engine.plan"));
    e.tensorrt_version = trt->at("tensorrt_version").get<std::string>();
    e.compute_capability = trt->at("compute_capability").get<std::string>();
    e.ptx_isa = trt->value("ptx_isa", std::string());
    for (const auto& [name, entry] : trt->at("plugins").items()) {
      e.plugins[name] = {entry.at("version").get<int>(), entry.at("form").get<std::string>()};
    }
    for (const auto& profile : trt->at("profiles")) {
      const auto& high = profile.at("shapes").at("input_ids").at(2);  // (min, opt, max) of [batch, tokens]
      e.profiles.push_back({profile.at("name").get<std::string>(), high.at(0).get<int>(), high.at(1).get<int>()});
    }
    if (e.profiles.size() != 2) {
      throw ManifestError(where + ": tensorrt.profiles must hold the prefill and the decode profile. Rebuild the "
                          "engine with `planforge build --target tensorrt`.");
    }
    m.tensorrt = e;
  }
  return m;
}

Manifest Manifest::load(const std::string& directory) {
  const std::string path = directory + "/planforge.json";
  std::ifstream file(path);
  if (!file) {
    throw ManifestError(path + " does not exist: " + directory + " is not a compiled model. Run `planforge export`.");
  }
  std::stringstream text;
  text << file.rdbuf();
  return parse(text.str(), path);
}

}  // namespace planforge
