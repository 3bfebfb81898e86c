#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "admpff/contract.hpp"
#include "admpff/error.hpp"

namespace {

// What InputContract().to_json() writes in runtime/contract.py (288x144, 10 stripes of 512).
nlohmann::json python_contract() {
  nlohmann::json stripes = nlohmann::json::array();
  const char* names[] = {"p3.0", "p3.1", "p3.2", "p6.0", "p6.1", "p6.2", "p6.3", "p6.4", "p6.5", "en"};
  for (int i = 0; i < 10; ++i) stripes.push_back({{"name", names[i]}, {"offset", i * 512}, {"size", 512}});
  return {{"channel_order", "RGB"}, {"embedding", stripes}, {"embedding_dim", 5120},
          {"embedding_l2_normalized", true}, {"height", 288}, {"input_names", {"images", "modality"}},
          {"layout", "NCHW"}, {"mean", {0.485, 0.456, 0.406}}, {"modality_codes", {{"infrared", 1}, {"visible", 0}}},
          {"modality_dtype", "int32"}, {"normalization_in_graph", true}, {"output_name", "embedding"},
          {"resize_interpolation", "linear"}, {"std", {0.229, 0.224, 0.225}}, {"value_range", {0.0, 255.0}},
          {"width", 144}};
}

TEST(Contract, ReadsWhatPythonWrites) {
  const auto c = admpff::InputContract::from_json(python_contract().dump());
  EXPECT_EQ(c.height, 288);
  EXPECT_EQ(c.width, 144);
  EXPECT_EQ(c.channel_order, "RGB");
  EXPECT_EQ(c.embedding_dim(), 5120);
  EXPECT_EQ(c.images_input, "images");
  EXPECT_EQ(c.modality_input, "modality");
  EXPECT_EQ(c.output_name, "embedding");
  EXPECT_EQ(c.modality_code("visible"), 0);
  EXPECT_EQ(c.modality_code("Infrared"), 1);
  EXPECT_EQ(c.modality_code("thermal"), 1);
  EXPECT_EQ(c.modality_code("IR"), 1);
  EXPECT_EQ(c.modality_code("rgb"), 0);
}

TEST(Contract, UnknownModalityNamesTheChoices) {
  const auto c = admpff::InputContract::from_json(python_contract().dump());
  try {
    c.modality_code("sonar");
    FAIL() << "no exception";
  } catch (const admpff::InvalidInputError& exc) {
    EXPECT_STREQ(exc.what(), "unknown modality 'sonar'; expected one of ['infrared', 'visible']");
  }
}

TEST(Contract, RefusesBadContracts) {
  auto bad = python_contract();
  bad["channel_order"] = "YUV";
  EXPECT_THROW(admpff::InputContract::from_json(bad.dump(), "m.onnx"), admpff::ModelLoadError);
  bad = python_contract();
  bad["future_field"] = 1;
  try {
    admpff::InputContract::from_json(bad.dump(), "m.onnx");
    FAIL();
  } catch (const admpff::ModelLoadError& exc) {
    EXPECT_NE(std::string(exc.what()).find("unknown fields ['future_field']"), std::string::npos) << exc.what();
  }
  bad = python_contract();
  bad["embedding"][1]["offset"] = 7;
  EXPECT_THROW(admpff::InputContract::from_json(bad.dump()), admpff::ModelLoadError);
  bad = python_contract();
  bad.erase("height");
  EXPECT_THROW(admpff::InputContract::from_json(bad.dump()), admpff::ModelLoadError);
  EXPECT_THROW(admpff::InputContract::from_json("{not json"), admpff::ModelLoadError);
}

TEST(ModelInfo, FromMetadata) {
  const std::map<std::string, std::string> meta = {{"admpff.contract", python_contract().dump()},
                                                   {"admpff.precision", "int8-qdq"},
                                                   {"admpff.checkpoint_sha256", "abc"}};
  const auto info = admpff::ModelInfo::from_metadata(meta, "m.onnx");
  EXPECT_EQ(info.precision, "int8-qdq");
  EXPECT_EQ(info.checkpoint_sha256, "abc");
  EXPECT_TRUE(info.tensorrt_compatible);
  try {
    admpff::ModelInfo::from_metadata({}, "m.onnx");
    FAIL();
  } catch (const admpff::ModelLoadError& exc) {
    EXPECT_STREQ(exc.what(), "m.onnx carries no admpff contract in its metadata (was it exported with admpff-export?)");
  }
}

}  // namespace
