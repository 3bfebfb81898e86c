// An ONNX file's metadata_props, read from the top level of its protobuf without parsing the graph.
#pragma once

#include <map>
#include <string>

namespace admpff::detail {

/// ModelProto field 14 (StringStringEntryProto {1: key, 2: value}); the graph and the weights are skipped by
/// their length, so a 300 MB file costs a few reads.  Empty for anything that does not parse (the real
/// reader then reports the problem).
std::map<std::string, std::string> onnx_metadata(const std::string& path);

}  // namespace admpff::detail
