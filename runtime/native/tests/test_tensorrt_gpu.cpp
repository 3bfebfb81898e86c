// TensorRT on a GPU (ctest label gpu).  Runs the engine named by ADMPFF_TEST_ENGINE (built on this GPU with
// admpff-build-engine, sidecar next to it); exits 77 (ctest: skipped) with the reason when that cannot run here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <iostream>

#include "admpff/embedder.hpp"
#include "admpff/error.hpp"

namespace {

const char* engine_path() { return std::getenv("ADMPFF_TEST_ENGINE"); }

TEST(TensorRT, EmbedsSplitsAndNormalises) {
  admpff::Embedder e(engine_path());
  const int max_batch = e.max_batch();
  ASSERT_GT(max_batch, 0);
  std::vector<cv::Mat> crops;
  cv::RNG rng(7);
  for (int i = 0; i < max_batch + 3; ++i) {  // more than the profile allows: split
    cv::Mat crop(100 + i, 50 + i, CV_8UC3);
    rng.fill(crop, cv::RNG::UNIFORM, 0, 256);
    crops.push_back(crop);
  }
  crops[1] = cv::Mat();
  const auto m = e.embed(crops, "visible");
  ASSERT_EQ(m.rows, crops.size());
  EXPECT_EQ(e.empty_crops(), 1u);
  for (std::size_t r = 0; r < m.rows; ++r) {
    double s = 0;
    for (std::size_t j = 0; j < m.cols; ++j) s += static_cast<double>(m.row(r)[j]) * m.row(r)[j];
    EXPECT_NEAR(std::sqrt(s), r == 1 ? 0.0 : 1.0, 1e-3) << r;
  }
  const auto alone = e.embed({crops.back()}, "visible");
  double dot = 0;
  for (std::size_t j = 0; j < m.cols; ++j) dot += static_cast<double>(alone.row(0)[j]) * m.row(m.rows - 1)[j];
  EXPECT_GT(dot, 0.999);
}

}  // namespace

int main(int argc, char** argv) {
#ifndef ADMPFF_HAVE_TENSORRT
  (void)argc;
  (void)argv;
  std::cout << "SKIPPED: built without TensorRT (configure on a machine with TensorRT >= 8.5 and CUDA)\n";
  return 77;
#else
  if (!engine_path()) {
    std::cout << "SKIPPED: set ADMPFF_TEST_ENGINE to an engine built on this GPU with admpff-build-engine\n";
    return 77;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
#endif
}
