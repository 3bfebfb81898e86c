#include "onnx_metadata.hpp"

#include <cstdint>
#include <fstream>

namespace admpff::detail {

namespace {

bool read_varint(std::istream& in, uint64_t& value) {
  value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    const int byte = in.get();
    if (byte == std::char_traits<char>::eof()) return false;
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (byte < 0x80) return true;
  }
  return false;
}

bool read_bytes(std::istream& in, uint64_t length, std::string& out) {
  if (length > (1u << 24)) return false;  // a metadata string, not a tensor
  out.resize(static_cast<std::size_t>(length));
  return static_cast<bool>(in.read(out.data(), static_cast<std::streamsize>(length)));
}

}  // namespace

std::map<std::string, std::string> onnx_metadata(const std::string& path) {
  std::map<std::string, std::string> props;
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  in.seekg(0, std::ios::end);
  const auto end = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  uint64_t key = 0;
  while (static_cast<uint64_t>(in.tellg()) < end) {
    if (!read_varint(in, key)) return {};
    const uint64_t field = key >> 3, wire = key & 7;
    uint64_t value = 0;
    if (wire == 0) {
      if (!read_varint(in, value)) return {};
    } else if (wire == 1 || wire == 5) {
      in.seekg(wire == 1 ? 8 : 4, std::ios::cur);
    } else if (wire == 2) {
      uint64_t length = 0;
      if (!read_varint(in, length)) return {};
      const auto start = static_cast<uint64_t>(in.tellg());
      if (length > end - start) return {};
      if (field == 14) {  // one StringStringEntryProto
        std::string entry_key, entry_value;
        while (static_cast<uint64_t>(in.tellg()) < start + length) {
          uint64_t entry_tag = 0, entry_length = 0;
          std::string text;
          if (!read_varint(in, entry_tag) || (entry_tag & 7) != 2 || !read_varint(in, entry_length) ||
              !read_bytes(in, entry_length, text))
            return {};
          ((entry_tag >> 3) == 1 ? entry_key : entry_value) = text;
        }
        props[entry_key] = entry_value;
      }
      in.seekg(static_cast<std::streamoff>(start + length));
    } else {
      return {};
    }
    if (!in) return {};
  }
  return props;
}

}  // namespace admpff::detail
