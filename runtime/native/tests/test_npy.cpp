#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "admpff/error.hpp"
#include "admpff/files.hpp"
#include "admpff/npy.hpp"

namespace {

TEST(Npy, RoundTripAndAlignedHeader) {
  admpff::Matrix m;
  m.rows = 2;
  m.cols = 3;
  m.data = {1, 2, 3, 4, 5, -6.5f};
  const std::string path = testing::TempDir() + "/m.npy";
  admpff::write_npy(path, m);
  const std::string bytes = admpff::read_file(path);
  EXPECT_EQ((bytes.size() - m.data.size() * 4) % 64, 0u);  // data starts on a 64-byte boundary
  const auto a = admpff::parse_npy(bytes);
  EXPECT_EQ(a.descr, "<f4");
  EXPECT_EQ(a.shape, (std::vector<std::size_t>{2, 3}));
  EXPECT_EQ(a.as_float(), m.data);
  EXPECT_THROW(admpff::parse_npy(bytes.substr(0, bytes.size() - 1)), admpff::InvalidInputError);
  EXPECT_THROW(admpff::parse_npy("garbage"), admpff::InvalidInputError);
  std::remove(path.c_str());
}

TEST(Files, OutputPathProblems) {
  EXPECT_EQ(admpff::output_path_problem(testing::TempDir() + "/x.npy"), "");
  EXPECT_NE(admpff::output_path_problem("/no/such/folder/x.npy"), "");
  EXPECT_THROW(admpff::write_file_atomic("/no/such/folder/x.npy", "x"), admpff::Error);
}

}  // namespace
