#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "planforge/runtime.hpp"

using namespace planforge;

namespace {

// An engine directory's manifest as build --target tensorrt writes it (runtime/tensorrt_engine.py).
std::string engine_manifest(const std::string& decode_form = "aot", int kv_version = 2) {
  return R"({"target": "tensorrt", "dtype": "bf16",
  "dims": {"num_layers": 1, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
           "intermediate_size": 128, "vocab_size": 10, "max_seq_len": 16},
  "eos_token_ids": [9], "pad_token_id": 0,
  "io": {"version": 2, "kv_cache": [{"layer": 0, "capacity": 16, "rolling": false, "sinks": 0}]},
  "plugin_ops": {"planforge::KVCacheUpdate": 2, "planforge::FusedAttentionDecode": 2},
  "tensorrt": {"engine": "engine.plan", "tensorrt_version": "10.13.0.35", "compute_capability": "9.0",
    "ptx_isa": "8.7", "strongly_typed": true,
    "plugins": {"planforge::KVCacheUpdate": {"version": )" + std::to_string(kv_version) + R"(, "form": "aot"},
                "planforge::FusedAttentionDecode": {"version": 2, "form": ")" + decode_form + R"("}},
    "profiles": [
      {"name": "prefill", "shapes": {"input_ids": [[1, 1], [1, 8], [4, 12]]}},
      {"name": "decode", "shapes": {"input_ids": [[1, 1], [1, 1], [4, 1]]}}]}})";
}

class EngineDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = std::filesystem::temp_directory_path() / ("pf_engine_" + std::to_string(::getpid()) + "_" +
                                                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir);
    write("engine.plan", "serialized engine");
  }
  void TearDown() override { std::filesystem::remove_all(dir); }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir / name) << text; }
  Manifest manifest(const std::string& text) {
    write("planforge.json", text);
    return Manifest::load(dir.string());
  }
  std::filesystem::path dir;
};

template <typename Error, typename Fn>
std::string message_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

}  // namespace

TEST_F(EngineDir, ParsesTheTensorRTSection) {
  const Manifest m = manifest(engine_manifest());
  ASSERT_TRUE(m.tensorrt.has_value());
  EXPECT_EQ(m.tensorrt->tensorrt_version, "10.13.0.35");
  EXPECT_EQ(m.tensorrt->plugins.at("planforge::KVCacheUpdate").form, "aot");
  EXPECT_EQ(m.tensorrt->profiles.at(0).max_batch, 4);
  EXPECT_EQ(m.tensorrt->profiles.at(0).max_tokens, 12);
  EXPECT_EQ(m.tensorrt->profiles.at(1).max_tokens, 1);
}

TEST_F(EngineDir, PassesOnTheReleaseAndGpuItWasBuiltFor) {
  const Manifest m = manifest(engine_manifest());
  EXPECT_EQ(check_engine(dir.string(), m, "10.13.0", "9.0"), (dir / "engine.plan").string());
}

TEST_F(EngineDir, RefusesAnotherTensorRTOrGpu) {
  const Manifest m = manifest(engine_manifest());
  EXPECT_NE(message_of<EngineMismatchError>([&] { check_engine(dir.string(), m, "11.4.0", "9.0"); })
                .find("built with TensorRT 10.13.0.35; this runtime has TensorRT 11.4.0"),
            std::string::npos);
  EXPECT_NE(message_of<EngineMismatchError>([&] { check_engine(dir.string(), m, "10.13.0", "8.9"); })
                .find("compute capability 9.0; this GPU is 8.9"),
            std::string::npos);
}

TEST_F(EngineDir, RefusesAMissingEngineOrNone) {
  const Manifest m = manifest(engine_manifest());
  write("engine.plan", "");
  EXPECT_NE(message_of<EngineDirError>([&] { check_engine_directory(dir.string(), m); }).find("missing or empty"),
            std::string::npos);
  Manifest plain = m;
  plain.tensorrt.reset();
  EXPECT_NE(message_of<EngineDirError>([&] { check_engine_directory(dir.string(), plain); }).find("no TensorRT engine"),
            std::string::npos);
}

TEST_F(EngineDir, NamesAPluginVersionItLacks) {
  const Manifest m = manifest(engine_manifest("aot", 7));
  EXPECT_NE(message_of<PluginVersionError>([&] { check_engine_directory(dir.string(), m); })
                .find("planforge::KVCacheUpdate version 7; this runtime has version 2"),
            std::string::npos);
}

TEST_F(EngineDir, RefusesPythonPluginsNamingThem) {
  const Manifest m = manifest(engine_manifest("python"));
  const std::string message = message_of<EngineMismatchError>([&] { check_engine_directory(dir.string(), m); });
  EXPECT_NE(message.find("Python plugins (planforge::FusedAttentionDecode v2)"), std::string::npos) << message;
}

TEST_F(EngineDir, RefusesAStepBeyondItsProfile) {
  const Manifest m = manifest(engine_manifest());
  EXPECT_EQ(profile_for(*m.tensorrt, 4, 12).name, "prefill");
  EXPECT_EQ(profile_for(*m.tensorrt, 4, 1).name, "decode");
  EXPECT_NE(message_of<PromptTooLongError>([&] { profile_for(*m.tensorrt, 1, 13); })
                .find("prefill profile takes at most 4 x 12"),
            std::string::npos);
  EXPECT_THROW(profile_for(*m.tensorrt, 5, 1), PromptTooLongError);
}

TEST_F(EngineDir, WithoutTensorRTTheRuntimeChecksThenRefuses) {
  manifest(engine_manifest());
  if (tensorrt_compiled_in()) GTEST_SKIP() << "built with TensorRT";
  EXPECT_NE(message_of<BackendUnavailableError>([&] { Runtime runtime(dir.string()); }).find("built without TensorRT"),
            std::string::npos);
  manifest(engine_manifest("python"));
  EXPECT_THROW(Runtime runtime(dir.string()), EngineMismatchError);  // the directory's own errors first
}

TEST_F(EngineDir, RefusesAModelThatIsNotAnEngine) {
  std::string text = engine_manifest();
  text.replace(text.find("\"tensorrt\", \"dtype\""), 10, "\"torch\"");
  manifest(text);
  EXPECT_NE(message_of<EngineDirError>([&] { Runtime runtime(dir.string()); }).find("a 'torch' model, which this "
                                                                                      "runtime cannot run"),
            std::string::npos);
}

TEST_F(EngineDir, TheOnnxRuntimeBackendSaysWhatItCannotRun) {
  std::string text = engine_manifest();
  auto swap = [&](const std::string& from, const std::string& to) { text.replace(text.find(from), from.size(), to); };
  swap("\"tensorrt\", \"dtype\"", "\"onnxruntime\", \"dtype\"");
  manifest(text);
  RuntimeOptions options;
  options.onnxruntime_library = (dir / "no-such-libonnxruntime.so").string();
  EXPECT_NE(message_of<BackendUnavailableError>([&] { Runtime runtime(dir.string(), options); })
                .find("holds a bf16 model, whose KV cache ONNX Runtime's CPU kernels cannot take"),
            std::string::npos);  // the model's problem first
  swap("\"dtype\": \"bf16\"", "\"dtype\": \"fp16\"");
  swap("\"io\": {", "\"io\": {\"past_present_share_buffer\": true, ");
  manifest(text);
  EXPECT_TRUE(Manifest::load(dir.string()).shared_kv_buffers);
  EXPECT_NE(message_of<BackendUnavailableError>([&] { Runtime runtime(dir.string(), options); })
                .find("could not load ONNX Runtime (" + options.onnxruntime_library + ")"),
            std::string::npos);
}

namespace {
class NextTokenBackend : public StepBackend {  // all mass on (last id + 1) % vocab
 public:
  void reset(int) override {}
  std::vector<float> forward(const std::vector<int64_t>& ids, const std::vector<int64_t>&,
                             const std::vector<int64_t>&, int batch, int seq, int) override {
    std::vector<float> logits(batch * 10, 0.f);
    for (int b = 0; b < batch; ++b) logits[b * 10 + (ids[b * seq + seq - 1] + 1) % 10] = 10.f;
    return logits;
  }
};
}  // namespace

TEST_F(EngineDir, RuntimeGeneratesOverAnyStepBackend) {
  Runtime runtime(manifest(engine_manifest()), std::make_unique<NextTokenBackend>());
  std::vector<std::pair<int, int64_t>> seen;
  GenerationConfig config;
  config.max_new_tokens = 5;
  const auto result = runtime.generate({{3, 4}, {6}}, config, [&](int row, int64_t t) { seen.push_back({row, t}); });
  EXPECT_EQ(result.tokens[0], (std::vector<int64_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(result.finish_reasons[0], "stop");  // 9 is EOS
  EXPECT_EQ(result.tokens[1], (std::vector<int64_t>{7, 8, 9}));
  EXPECT_EQ(seen.size(), 8u);
}
