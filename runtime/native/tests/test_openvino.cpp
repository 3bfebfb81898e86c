// OpenVINO backend end to end on the tiny contract model written by tests/_tiny_model.py (288x144 -> 5120).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "admpff/embedder.hpp"
#include "admpff/error.hpp"

namespace {

const std::string kModel = ADMPFF_TINY_MODEL;

std::vector<cv::Mat> crops(int n, int seed) {
  cv::RNG rng(static_cast<uint64_t>(seed));
  std::vector<cv::Mat> out;
  for (int i = 0; i < n; ++i) {
    cv::Mat crop(60 + 13 * i, 30 + 7 * i, CV_8UC3);
    rng.fill(crop, cv::RNG::UNIFORM, 0, 256);
    crop += cv::Scalar(20.0 * i, 0, 0);  // different colours -> different directions
    out.push_back(crop);
  }
  return out;
}

double norm(const admpff::Matrix& m, std::size_t r) {
  double s = 0;
  for (std::size_t j = 0; j < m.cols; ++j) s += static_cast<double>(m.row(r)[j]) * m.row(r)[j];
  return std::sqrt(s);
}

TEST(OpenVino, ContractFromTheFileAndUnitRows) {
  admpff::EmbedderOptions options;
  options.inference_precision = admpff::InferencePrecision::F32;
  options.threads = 1;
  admpff::Embedder e(kModel, options);
  EXPECT_EQ(e.contract().height, 288);
  EXPECT_EQ(e.contract().width, 144);
  EXPECT_EQ(e.dim(), 5120);
  EXPECT_EQ(e.info().checkpoint_sha256, "ctest");
  EXPECT_NE(e.describe().find("f32"), std::string::npos) << e.describe();
  const auto m = e.embed(crops(3, 1), "visible");
  ASSERT_EQ(m.rows, 3u);
  for (std::size_t r = 0; r < 3; ++r) EXPECT_NEAR(norm(m, r), 1.0, 1e-5);
}

TEST(OpenVino, SplitBatchesEqualSingleRunsAndModalityMatters) {
  admpff::EmbedderOptions options;
  options.inference_precision = admpff::InferencePrecision::F32;
  options.max_batch = 2;  // 5 crops -> batches of 2, 2, 1
  admpff::Embedder e(kModel, options);
  EXPECT_EQ(e.max_batch(), 2);
  const auto input = crops(5, 2);
  const std::vector<std::string> mods = {"visible", "infrared", "ir", "visible", "thermal"};
  const auto all = e.embed(input, mods);
  for (std::size_t i = 0; i < input.size(); ++i) {
    const auto one = e.embed({input[i]}, mods[i]);
    for (std::size_t j = 0; j < all.cols; ++j) ASSERT_NEAR(all.row(i)[j], one.row(0)[j], 1e-5) << i;
  }
  const auto vis = e.embed({input[1]}, "visible");
  double diff = 0;
  for (std::size_t j = 0; j < vis.cols; ++j) diff += std::abs(vis.row(0)[j] - all.row(1)[j]);
  EXPECT_GT(diff, 1e-2);  // the same crop as infrared embeds elsewhere
}

TEST(OpenVino, EmptyListEmptyCropsAndBadArguments) {
  admpff::Embedder e(kModel);
  const auto none = e.embed({}, "visible");
  EXPECT_EQ(none.rows, 0u);
  EXPECT_EQ(none.cols, 5120u);
  auto input = crops(2, 3);
  input.insert(input.begin() + 1, cv::Mat(0, 10, CV_8UC3));
  const auto m = e.embed(input, "visible");
  ASSERT_EQ(m.rows, 3u);
  EXPECT_EQ(norm(m, 1), 0.0);
  EXPECT_NEAR(norm(m, 0), 1.0, 1e-5);
  EXPECT_NEAR(norm(m, 2), 1.0, 1e-5);
  EXPECT_EQ(e.empty_crops(), 1u);
  EXPECT_THROW(e.embed(input, std::vector<std::string>{"visible"}), admpff::InvalidInputError);
  EXPECT_THROW(e.embed(input, "sonar"), admpff::InvalidInputError);
  try {
    e.embed({cv::Mat(), input[0], cv::Mat(4, 4, CV_8UC2)}, "visible");
    FAIL() << "a two-channel crop was accepted";
  } catch (const admpff::InvalidInputError& exc) {
    EXPECT_NE(std::string(exc.what()).find("crop #2 has 2 channels"), std::string::npos) << exc.what();
  }
}

TEST(OpenVino, BadModelFiles) {
  EXPECT_THROW(admpff::Embedder("/no/such/model.onnx"), admpff::ModelLoadError);
  const std::string garbage = testing::TempDir() + "/garbage.onnx";
  std::ofstream(garbage) << "this is not a protobuf";
  EXPECT_THROW(admpff::Embedder{garbage}, admpff::ModelLoadError);
  EXPECT_THROW(admpff::Embedder("model.pt"), admpff::ModelLoadError);
  admpff::EmbedderOptions options;
  options.openvino_device = "NO_SUCH_DEVICE";
  EXPECT_THROW(admpff::Embedder(kModel, options), admpff::ModelLoadError);
}

}  // namespace
