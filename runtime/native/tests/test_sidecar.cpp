#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "admpff/engine_sidecar.hpp"
#include "admpff/error.hpp"

namespace {

nlohmann::json sidecar_json() {
  const std::string contract =
      R"({"channel_order": "RGB", "embedding": [{"name": "en", "offset": 0, "size": 16}], "height": 96, )"
      R"("input_names": ["images", "modality"], "layout": "NCHW", "modality_codes": {"infrared": 1, "visible": 0}, )"
      R"("output_name": "embedding", "resize_interpolation": "linear", "width": 48})";
  return {{"tensorrt_version", "10.3.0.30"}, {"gpu_name", "Orin"}, {"compute_capability", "8.7"},
          {"precision", "fp16"}, {"onnx_precision", "fp32"}, {"batch", {1, 8, 32}}, {"onnx_sha256", "ab12"},
          {"metadata", {{"admpff.contract", contract}, {"admpff.checkpoint_sha256", "c0ffee"}, {"admpff.precision", "fp32"}}},
          {"onnx_path", "models/m.onnx"}, {"requested_precision", "fp16"}, {"format", 1}};
}

TEST(Sidecar, ParsesAndCarriesTheContract) {
  const auto s = admpff::EngineSidecar::from_json(sidecar_json().dump());
  EXPECT_EQ(s.batch[2], 32);
  const auto info = s.model_info("m.engine");
  EXPECT_EQ(info.precision, "fp16");  // the engine's precision, not the ONNX's
  EXPECT_EQ(info.checkpoint_sha256, "c0ffee");
  EXPECT_EQ(info.contract.height, 96);
  EXPECT_EQ(info.contract.embedding_dim(), 16);
}

TEST(Sidecar, RefusesMalformedSidecars) {
  auto j = sidecar_json();
  j.erase("gpu_name");
  j.erase("batch");
  try {
    admpff::EngineSidecar::from_json(j.dump(), "m.engine.json");
    FAIL();
  } catch (const admpff::SidecarError& exc) {
    EXPECT_STREQ(exc.what(), "m.engine.json lacks ['gpu_name', 'batch']");
  }
  j = sidecar_json();
  j["format"] = 2;
  EXPECT_THROW(admpff::EngineSidecar::from_json(j.dump()), admpff::SidecarError);
  j = sidecar_json();
  j["batch"] = {1, 8};
  EXPECT_THROW(admpff::EngineSidecar::from_json(j.dump()), admpff::SidecarError);
  EXPECT_THROW(admpff::EngineSidecar::from_json("[1, 2]"), admpff::SidecarError);
  EXPECT_THROW(admpff::EngineSidecar::from_json("{oops"), admpff::SidecarError);
}

TEST(Sidecar, SameReleaseAndGpuIsAccepted) {
  const auto s = admpff::EngineSidecar::from_json(sidecar_json().dump());
  EXPECT_NO_THROW(admpff::check_compatible(s, "10.3.0", "orin ", "8.7"));  // build number and case ignored
}

TEST(Sidecar, MismatchNamesEveryDifferenceAndTheRebuildCommand) {
  const auto s = admpff::EngineSidecar::from_json(sidecar_json().dump());
  try {
    admpff::check_compatible(s, "10.4.0", "NVIDIA H200", "9.0", "", "/data/my model.engine");
    FAIL();
  } catch (const admpff::EngineMismatchError& exc) {
    EXPECT_STREQ(exc.what(),
                 "my model.engine does not match this device: TensorRT 10.3.0.30 built it, but this runtime has "
                 "TensorRT 10.4.0; it was built for compute capability 8.7 (Orin), but this GPU is 9.0 (NVIDIA H200). "
                 "Rebuild it here: admpff-build-engine models/m.onnx --out '/data/my model.engine' --batch 1,8,32 "
                 "--precision fp16");
  }
  try {
    admpff::check_compatible(s, "10.3.1", "Jetson AGX Orin", "8.7", "ffff");
    FAIL();
  } catch (const admpff::EngineMismatchError& exc) {
    const std::string what = exc.what();
    EXPECT_NE(what.find("it was built on a Orin, but this GPU is a Jetson AGX Orin"), std::string::npos) << what;
    EXPECT_NE(what.find("not the expected ffff..."), std::string::npos) << what;
    EXPECT_NE(what.find("--out '<model.engine>'"), std::string::npos) << what;
  }
}

TEST(Sidecar, MissingSidecarSaysHowToRebuild) {
  const std::string engine = testing::TempDir() + "/nosidecar.engine";
  std::ofstream(engine) << "plan";
  try {
    admpff::read_sidecar(engine);
    FAIL();
  } catch (const admpff::SidecarError& exc) {
    EXPECT_NE(std::string(exc.what()).find("nosidecar.engine has no sidecar nosidecar.engine.json"), std::string::npos);
  }
  std::ofstream(admpff::sidecar_path(engine)) << sidecar_json().dump();
  EXPECT_EQ(admpff::read_sidecar(engine).gpu_name, "Orin");
  std::remove(admpff::sidecar_path(engine).c_str());
  std::remove(engine.c_str());
}

}  // namespace
