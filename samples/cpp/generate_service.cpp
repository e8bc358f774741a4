// A minimal generation service over planforge's C++ runtime: it opens a TensorRT engine directory once, then
// answers one JSON request per stdin line with JSON lines on stdout, streaming each token as it is picked.
//
//   planforge_generate_service ENGINE_DIR < requests.jsonl
//   request:  {"prompts": [[1, 2, 3], [4, 5]], "max_new_tokens": 32, "temperature": 0.8, "top_k": 40,
//              "top_p": 0.9, "seed": 1, "stop": [2]}          (all but "prompts" optional; no temperature: greedy)
//   replies:  {"row": 0, "token": 17} ... then {"tokens": [[...], [...]], "finish_reasons": ["stop", "length"]}
//             or {"error": "..."} for a bad request, after which the service keeps serving.
// Exit status 2, with the reason on stderr, when the engine directory cannot be opened.
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "planforge/runtime.hpp"

namespace {

planforge::GenerationConfig config_from(const nlohmann::json& request) {
  planforge::GenerationConfig config;
  config.max_new_tokens = request.value("max_new_tokens", 64);
  if (request.contains("temperature")) {
    config.sampling.do_sample = true;
    config.sampling.temperature = request.at("temperature").get<double>();
  }
  config.sampling.top_k = request.value("top_k", 0);
  config.sampling.top_p = request.value("top_p", 1.0);
  if (request.contains("seed")) config.sampling.seed = request.at("seed").get<uint64_t>();
  config.stop_token_ids = request.value("stop", std::vector<int64_t>{});
  return config;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || std::string(argv[1]) == "--help") {
    std::cerr << "usage: " << argv[0] << " ENGINE_DIR  (JSON-lines requests on stdin; see the source's header)\n";
    return argc == 2 ? 0 : 2;
  }
  std::unique_ptr<planforge::Runtime> runtime;
  try {
    runtime = std::make_unique<planforge::Runtime>(argv[1]);
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 2;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    try {
      const nlohmann::json request = nlohmann::json::parse(line);
      const auto prompts = request.at("prompts").get<std::vector<std::vector<int64_t>>>();
      const auto result = runtime->generate(prompts, config_from(request), [](int row, int64_t token) {
        std::cout << nlohmann::json{{"row", row}, {"token", token}}.dump() << "\n" << std::flush;
      });
      std::cout << nlohmann::json{{"tokens", result.tokens}, {"finish_reasons", result.finish_reasons}}.dump() << "\n";
    } catch (const std::exception& error) {  // a bad request: say why, keep serving
      std::cout << nlohmann::json{{"error", error.what()}}.dump() << "\n";
    }
    std::cout << std::flush;
  }
  return 0;
}
