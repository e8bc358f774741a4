#include <gtest/gtest.h>

#include "planforge/manifest.hpp"

using planforge::Manifest;
using planforge::ManifestError;

namespace {
const char* kLowered = R"({"target": "torch", "dtype": "bf16",
  "dims": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
           "intermediate_size": 128, "vocab_size": 320, "max_seq_len": 256},
  "eos_token_ids": [0, 2], "pad_token_id": 1, "streaming": {"sink_tokens": 2, "window": 6, "cache_slots": 8},
  "io": {"version": 2, "kv_cache": [{"layer": 0, "capacity": 8, "rolling": true, "sinks": 2},
                                    {"layer": 1, "capacity": 8, "rolling": true, "sinks": 2}]},
  "plugin_ops": {"planforge::KVCacheUpdate": 2}})";
}  // namespace

TEST(Manifest, ParsesWhatTheRuntimeNeeds) {
  Manifest m = Manifest::parse(kLowered, "planforge.json");
  EXPECT_EQ(m.target, "torch");
  EXPECT_EQ(m.dims.vocab_size, 320);
  EXPECT_EQ(m.dims.max_seq_len, 256);
  EXPECT_EQ(m.eos_token_ids, (std::vector<int>{0, 2}));
  EXPECT_EQ(m.pad_token_id.value(), 1);
  EXPECT_EQ(m.streaming_slots.value(), 8);
  EXPECT_EQ(m.io_version, 2);
  ASSERT_EQ(m.kv_cache.size(), 2u);
  EXPECT_TRUE(m.kv_cache[1].rolling);
  EXPECT_EQ(m.kv_cache[1].sinks, 2);
  EXPECT_EQ(m.plugin_ops.at("planforge::KVCacheUpdate"), 2);
}

TEST(Manifest, RefusesBadInputNamingTheProblem) {
  auto message = [](const std::string& text) {
    try {
      Manifest::parse(text, "x/planforge.json");
    } catch (const ManifestError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("not json"), "x/planforge.json is not a JSON object. Re-export the model.");
  EXPECT_EQ(message("{}"), "x/planforge.json has no \"dims\" object. Re-export the model.");
  EXPECT_NE(message(R"({"dims": {"num_layers": 0}})").find("dims.num_layers must be a positive integer"),
            std::string::npos);
  std::string odd = kLowered;
  odd.replace(odd.find("\"num_kv_heads\": 2"), 17, "\"num_kv_heads\": 3");
  EXPECT_NE(message(odd).find("not a multiple of dims.num_kv_heads"), std::string::npos);
  std::string typed = kLowered;
  typed.replace(typed.find("\"capacity\": 8"), 13, "\"capacity\": \"8\"");
  EXPECT_NE(message(typed).find("x/planforge.json: "), std::string::npos);  // a wrong type, not a crash
  EXPECT_THROW(Manifest::load("/nonexistent/model"), ManifestError);
}
