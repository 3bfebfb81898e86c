// NumPy .npy files (format 1.0): float32 2-D writing for the CLI's outputs, and reading of the arrays a
// gallery .npz holds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "admpff/embedder.hpp"

namespace admpff {

/// A parsed .npy array: raw little-endian data plus its dtype descriptor ("<f4", "|u1", "<i4", ...).
struct NpyArray {
  std::string descr;
  std::vector<std::size_t> shape;
  std::vector<char> data;

  std::size_t size() const;
  /// Values converted to the requested type; InvalidInputError for a dtype that cannot be converted.
  std::vector<float> as_float() const;
  std::vector<int64_t> as_int() const;
};

/// Parse the bytes of an .npy file; InvalidInputError naming `source` when malformed.
NpyArray parse_npy(const std::string& bytes, const std::string& source = "array");
/// Serialise float32 data with the given shape to .npy bytes.
std::string npy_bytes(const float* data, const std::vector<std::size_t>& shape);
/// Write a matrix as float32 [rows, cols] .npy, atomically (temporary file, fsync, rename).
void write_npy(const std::string& path, const Matrix& matrix);
/// Write float32 data of any shape as .npy, atomically.
void write_npy(const std::string& path, const float* data, const std::vector<std::size_t>& shape);

}  // namespace admpff
