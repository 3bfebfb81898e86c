#include <gtest/gtest.h>

#include <opencv2/imgproc.hpp>

#include "admpff/contract.hpp"
#include "admpff/error.hpp"
#include "admpff/preprocess.hpp"

namespace {

admpff::InputContract contract(const std::string& order = "RGB", int h = 8, int w = 4) {
  admpff::InputContract c;
  c.height = h;
  c.width = w;
  c.channel_order = order;
  c.layout = "NCHW";
  c.resize_interpolation = "linear";
  c.modality_codes = {{"visible", 0}, {"infrared", 1}};
  c.embedding = {{"en", 0, 4}};
  return c;
}

float at(const std::vector<float>& t, const admpff::InputContract& c, std::size_t n, int ch, int y, int x) {
  return t[((n * 3 + static_cast<std::size_t>(ch)) * static_cast<std::size_t>(c.height) + static_cast<std::size_t>(y)) *
               static_cast<std::size_t>(c.width) + static_cast<std::size_t>(x)];
}

TEST(Preprocess, ChannelOrderAndLayout) {
  const auto c = contract();
  cv::Mat crop(8, 4, CV_8UC3, cv::Scalar(10, 20, 30));  // B=10 G=20 R=30
  crop.at<cv::Vec3b>(3, 2) = cv::Vec3b(1, 2, 3);
  std::vector<float> t;
  admpff::crops_to_batch({crop}, c, t);
  ASSERT_EQ(t.size(), 3u * 8 * 4);
  EXPECT_EQ(at(t, c, 0, 0, 0, 0), 30.0f);  // R first
  EXPECT_EQ(at(t, c, 0, 1, 0, 0), 20.0f);
  EXPECT_EQ(at(t, c, 0, 2, 0, 0), 10.0f);
  EXPECT_EQ(at(t, c, 0, 0, 3, 2), 3.0f);
  EXPECT_EQ(at(t, c, 0, 2, 3, 2), 1.0f);
  const auto bgr = contract("BGR");
  admpff::crops_to_batch({crop}, bgr, t);
  EXPECT_EQ(at(t, bgr, 0, 0, 0, 0), 10.0f);
}

TEST(Preprocess, ResizeMatchesOpenCvLinearAndOutputIsBatchOrdered) {
  const auto c = contract("RGB", 16, 8);
  cv::Mat a(37, 23, CV_8UC3), b(5, 90, CV_8UC3);
  cv::randu(a, 0, 256);
  cv::randu(b, 0, 256);
  std::vector<float> t;
  admpff::crops_to_batch({a, b}, c, t);
  ASSERT_EQ(t.size(), 2u * 3 * 16 * 8);
  cv::Mat ref;
  cv::resize(b, ref, cv::Size(8, 16), 0, 0, cv::INTER_LINEAR);
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 8; ++x)
      for (int ch = 0; ch < 3; ++ch) ASSERT_EQ(at(t, c, 1, ch, y, x), ref.at<cv::Vec3b>(y, x)[2 - ch]);
  const cv::Mat resized = admpff::resize_crop(a, c);
  EXPECT_EQ(resized.rows, 16);
  EXPECT_EQ(resized.cols, 8);
  EXPECT_EQ(resized.type(), CV_8UC3);
}

TEST(Preprocess, GreyAlphaAndFloatCrops) {
  const auto c = contract();
  cv::Mat grey(8, 4, CV_8UC1, cv::Scalar(77));
  cv::Mat bgra(8, 4, CV_8UC4, cv::Scalar(1, 2, 3, 200));
  cv::Mat floats(8, 4, CV_32FC3, cv::Scalar(-5.0, 12.9, 300.0));
  std::vector<float> t;
  admpff::crops_to_batch({grey, bgra, floats}, c, t);
  for (int ch = 0; ch < 3; ++ch) EXPECT_EQ(at(t, c, 0, ch, 1, 1), 77.0f);
  EXPECT_EQ(at(t, c, 1, 0, 1, 1), 3.0f);
  EXPECT_EQ(at(t, c, 1, 2, 1, 1), 1.0f);
  EXPECT_EQ(at(t, c, 2, 0, 1, 1), 255.0f);  // clipped
  EXPECT_EQ(at(t, c, 2, 1, 1, 1), 12.0f);   // truncated, as numpy's astype(uint8)
  EXPECT_EQ(at(t, c, 2, 2, 1, 1), 0.0f);
}

TEST(Preprocess, EmptyAndNonImageCrops) {
  EXPECT_TRUE(admpff::is_empty_crop(cv::Mat()));
  EXPECT_TRUE(admpff::is_empty_crop(cv::Mat(0, 5, CV_8UC3)));
  EXPECT_FALSE(admpff::is_empty_crop(cv::Mat(1, 1, CV_8UC3)));
  EXPECT_THROW(admpff::validate_crop(cv::Mat(4, 4, CV_8UC2), 3), admpff::InvalidInputError);
  EXPECT_THROW(admpff::validate_crop(cv::Mat(), 0), admpff::InvalidInputError);
  std::vector<float> t;
  try {
    admpff::crops_to_batch({cv::Mat(4, 4, CV_8UC3), cv::Mat(4, 4, CV_8UC2)}, contract(), t);
    FAIL();
  } catch (const admpff::InvalidInputError& exc) {
    EXPECT_NE(std::string(exc.what()).find("crop #1"), std::string::npos) << exc.what();
  }
}

}  // namespace
