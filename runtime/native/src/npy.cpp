#include "admpff/npy.hpp"

#include <cstring>
#include <regex>

#include "admpff/error.hpp"
#include "admpff/files.hpp"

namespace admpff {

std::size_t NpyArray::size() const {
  std::size_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

namespace {

template <typename T>
T load_le(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // every platform admpff targets (x86-64, aarch64) is little-endian
  return v;
}

template <typename Out>
std::vector<Out> convert(const NpyArray& a) {
  const std::size_t n = a.size();
  std::vector<Out> out(n);
  const char* p = a.data.data();
  const std::string& d = a.descr;
  auto fill = [&](auto tag) {
    using T = decltype(tag);
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(load_le<T>(p + i * sizeof(T)));
  };
  if (d == "<f4") fill(float{});
  else if (d == "<f8") fill(double{});
  else if (d == "|u1") fill(uint8_t{});
  else if (d == "|i1") fill(int8_t{});
  else if (d == "<i2") fill(int16_t{});
  else if (d == "<i4") fill(int32_t{});
  else if (d == "<i8") fill(int64_t{});
  else if (d == "<u4") fill(uint32_t{});
  else throw InvalidInputError("unsupported .npy dtype " + d);
  return out;
}

std::size_t item_size(const std::string& descr) {
  if (descr.size() < 3) return 0;
  try {
    return static_cast<std::size_t>(std::stoul(descr.substr(2)));
  } catch (...) {
    return 0;
  }
}

}  // namespace

std::vector<float> NpyArray::as_float() const { return convert<float>(*this); }
std::vector<int64_t> NpyArray::as_int() const { return convert<int64_t>(*this); }

NpyArray parse_npy(const std::string& bytes, const std::string& source) {
  auto bad = [&](const std::string& why) { return InvalidInputError(source + " is not a valid .npy array: " + why); };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw bad("no NUMPY magic");
  const auto major = static_cast<unsigned char>(bytes[6]);
  std::size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw bad("truncated header");
    for (int i = 0; i < 4; ++i) header_len |= static_cast<std::size_t>(static_cast<unsigned char>(bytes[8 + static_cast<std::size_t>(i)])) << (8 * i);
    start = 12;
  } else {
    throw bad("format version " + std::to_string(major));
  }
  if (bytes.size() < start + header_len) throw bad("truncated header");
  const std::string header = bytes.substr(start, header_len);
  std::smatch m;
  NpyArray a;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']+)'"))) throw bad("no descr");
  a.descr = m[1];
  if (std::regex_search(header, m, std::regex("'fortran_order':\\s*True"))) throw bad("Fortran order");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) throw bad("no shape");
  const std::string dims = m[1];
  const std::regex number("[0-9]+");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), number); it != std::sregex_iterator(); ++it)
    a.shape.push_back(static_cast<std::size_t>(std::stoull(it->str())));
  const std::size_t item = item_size(a.descr);
  if (item == 0) throw bad("dtype " + a.descr);
  const std::size_t need = a.size() * item;
  const std::size_t offset = start + header_len;
  if (bytes.size() < offset + need) throw bad("data truncated");
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(offset), bytes.begin() + static_cast<std::ptrdiff_t>(offset + need));
  return a;
}

std::string npy_bytes(const float* data, const std::vector<std::size_t>& shape) {
  std::string dims;
  std::size_t n = 1;
  for (auto d : shape) {
    dims += std::to_string(d) + ", ";
    n *= d;
  }
  if (shape.size() > 1) dims.erase(dims.size() - 2);  // (3,) for 1-d, (3, 4) otherwise
  else if (shape.size() == 1) dims.erase(dims.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  out += header;
  out.append(reinterpret_cast<const char*>(data), n * sizeof(float));
  return out;
}

void write_npy(const std::string& path, const float* data, const std::vector<std::size_t>& shape) {
  write_file_atomic(path, npy_bytes(data, shape));
}

void write_npy(const std::string& path, const Matrix& matrix) {
  write_npy(path, matrix.data.data(), {matrix.rows, matrix.cols});
}

}  // namespace admpff
