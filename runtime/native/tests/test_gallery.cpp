#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "admpff/error.hpp"
#include "admpff/gallery.hpp"

namespace {

const std::string kData = ADMPFF_TEST_DATA;
const std::string kHash(std::string("cafe") + "cafe" + "cafe" + "cafe" + "cafe" + "cafe" + "cafe" + "cafe" + "cafe" +
                        "cafe" + "cafe" + "cafe" + "cafe" + "cafe" + "cafe" + "cafe");

class GalleryFiles : public testing::TestWithParam<const char*> {};

TEST_P(GalleryFiles, ReadsThePythonWriterOutput) {
  const auto g = admpff::Gallery::load(kData + "/" + GetParam(), kHash, 4);
  EXPECT_EQ(g.persons(), (std::vector<std::string>{"alice", "bob", "carol"}));
  EXPECT_EQ(g.embedding_dim(), 4);
  EXPECT_EQ(g.precision(), "fp32");
  ASSERT_EQ(g.embeddings().rows, 4u);
  EXPECT_EQ(g.owner(), (std::vector<int>{0, 0, 1, 2}));
  EXPECT_EQ(g.modality(), (std::vector<int>{0, 0, 1, -1}));
  EXPECT_FLOAT_EQ(g.embeddings().row(3)[2], 0.6f);
  EXPECT_FLOAT_EQ(g.embeddings().row(3)[3], 0.8f);
}
INSTANTIATE_TEST_SUITE_P(StoredAndDeflated, GalleryFiles, testing::Values("gallery.npz", "gallery_compressed.npz"));

TEST(Gallery, AnotherModelIsRefusedWithPythonsWording) {
  try {
    admpff::Gallery::load(kData + "/gallery.npz", std::string("0123456789abcdef"));
    FAIL();
  } catch (const admpff::ModelMismatchError& exc) {
    const std::string what = exc.what();
    EXPECT_NE(what.find("was built with another model (checkpoint cafecafecafe, admpff "), std::string::npos) << what;
    EXPECT_NE(what.find("than the one loaded (checkpoint 0123456789ab); embeddings of different models are not "
                        "comparable: rebuild it by enrolling"),
              std::string::npos) << what;
  }
  EXPECT_THROW(admpff::Gallery::load(kData + "/gallery.npz", kHash, 16), admpff::ModelMismatchError);
}

TEST(Gallery, MissingTruncatedAndForeignFiles) {
  EXPECT_THROW(admpff::Gallery::load(kData + "/absent.npz"), admpff::GalleryError);
  std::ifstream in(kData + "/gallery_compressed.npz", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string cut = testing::TempDir() + "/cut.npz";
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  EXPECT_THROW(admpff::Gallery::load(cut), admpff::GalleryError);
  std::string flipped = bytes;
  flipped[100] = static_cast<char>(flipped[100] ^ 0x5a);  // inside the first deflated member
  std::ofstream(cut, std::ios::binary) << flipped;
  EXPECT_THROW(admpff::Gallery::load(cut), admpff::GalleryError);
  std::ofstream(cut, std::ios::binary) << "not a zip file at all";
  EXPECT_THROW(admpff::Gallery::load(cut), admpff::GalleryError);
  std::remove(cut.c_str());
}

TEST(Matcher, TopKThresholdAndMaxOverRows) {
  const auto g = admpff::Gallery::load(kData + "/gallery.npz");
  admpff::Matrix q;
  q.rows = 3;
  q.cols = 4;
  q.data = {0.0f, 2.0f, 0.0f, 0.0f,    // bob exactly (unnormalised query)
            0.6f, 0.8f, 0.0f, 0.0f,    // alice's second row: 0.96; bob 0.8
            0.0f, 0.0f, 0.0f, 0.0f};   // a zero row (empty crop): scores 0, unknown
  const admpff::Matcher matcher(g, 0.9f);
  const auto r = matcher.match(q, 2);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].person, "bob");
  EXPECT_NEAR(r[0].score, 1.0f, 1e-6);
  EXPECT_EQ(r[1].person, "alice");
  EXPECT_NEAR(r[1].score, 0.96f, 1e-6);
  ASSERT_EQ(r[1].candidates.size(), 2u);
  EXPECT_EQ(r[1].candidates[1].first, "bob");
  EXPECT_NEAR(r[1].candidates[1].second, 0.8f, 1e-6);
  EXPECT_EQ(r[2].person, "unknown");
  EXPECT_FALSE(r[2].known());
  EXPECT_EQ(matcher.match(q, 99)[0].candidates.size(), 3u);  // k is capped at the number of people
}

}  // namespace
