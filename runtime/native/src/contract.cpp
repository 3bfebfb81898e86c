#include "admpff/contract.hpp"

#include <algorithm>
#include <cctype>
#include <set>

#include <nlohmann/json.hpp>

#include "admpff/error.hpp"
#include "pyrepr.hpp"

namespace admpff {

using detail::py_repr;
using nlohmann::json;

namespace {

// Fields InputContract.to_dict writes (runtime/contract.py); anything else means a newer admpff made the file.
const std::set<std::string> kKnownFields = {
    "height", "width", "channel_order", "layout", "value_range", "mean", "std", "normalization_in_graph",
    "resize_interpolation", "modality_codes", "modality_dtype", "embedding", "embedding_l2_normalized",
    "input_names", "output_name", "embedding_dim"};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace

int InputContract::embedding_dim() const {
  int dim = 0;
  for (const auto& s : embedding) dim += s.size;
  return dim;
}

int InputContract::modality_code(const std::string& modality) const {
  std::string key = lower(modality);
  if (key == "ir" || key == "thermal") key = "infrared";
  if (key == "rgb") key = "visible";
  const auto it = modality_codes.find(key);
  if (it == modality_codes.end()) {
    std::vector<std::string> names;
    for (const auto& kv : modality_codes) names.push_back(kv.first);  // std::map: sorted, like sorted() in Python
    throw InvalidInputError("unknown modality " + py_repr(modality) + "; expected one of " + py_repr(names));
  }
  return it->second;
}

InputContract InputContract::from_json(const std::string& text, const std::string& source) {
  const std::string where = source + " has an unreadable admpff contract: ";
  json d;
  try {
    d = json::parse(text);
  } catch (const json::exception& exc) {
    throw ModelLoadError(where + "not JSON (" + exc.what() + ")");
  }
  if (!d.is_object()) throw ModelLoadError(where + "not a JSON object");
  std::vector<std::string> unknown;
  for (const auto& item : d.items())
    if (!kKnownFields.count(item.key())) unknown.push_back(item.key());
  if (!unknown.empty())
    throw ModelLoadError(where + "contract has unknown fields " + py_repr(unknown) + " (made by a newer admpff?)");

  InputContract c;
  try {
    auto need = [&](const char* key) -> const json& {
      if (!d.contains(key)) throw ModelLoadError(where + "it lacks the field '" + std::string(key) + "'");
      return d.at(key);
    };
    c.height = need("height").get<int>();
    c.width = need("width").get<int>();
    c.channel_order = need("channel_order").get<std::string>();
    c.layout = need("layout").get<std::string>();
    c.resize_interpolation = need("resize_interpolation").get<std::string>();
    c.modality_codes = need("modality_codes").get<std::map<std::string, int>>();
    for (const auto& s : need("embedding"))
      c.embedding.push_back(Stripe{s.at("name").get<std::string>(), s.at("offset").get<int>(), s.at("size").get<int>()});
    c.embedding_l2_normalized = d.value("embedding_l2_normalized", true);
    const auto names = need("input_names").get<std::vector<std::string>>();
    if (names.size() != 2) throw ModelLoadError(where + "input_names must name the images and the modality inputs");
    c.images_input = names[0];
    c.modality_input = names[1];
    c.output_name = need("output_name").get<std::string>();
  } catch (const json::exception& exc) {
    throw ModelLoadError(where + exc.what());
  }
  if (c.channel_order != "RGB" && c.channel_order != "BGR")
    throw ModelLoadError(where + "channel_order must be RGB or BGR, not " + py_repr(c.channel_order));
  if (c.layout != "NCHW") throw ModelLoadError(where + "layout must be NCHW, not " + py_repr(c.layout));
  if (c.resize_interpolation != "linear" && c.resize_interpolation != "area" && c.resize_interpolation != "cubic")
    throw ModelLoadError(where + "resize_interpolation must be linear, area or cubic, not " +
                         py_repr(c.resize_interpolation));
  if (c.height <= 0 || c.width <= 0)
    throw ModelLoadError(where + "input size " + std::to_string(c.height) + "x" + std::to_string(c.width));
  int offset = 0;
  for (const auto& s : c.embedding) {
    if (s.offset != offset || s.size <= 0)
      throw ModelLoadError(where + "embedding layout is not contiguous at stripe " + py_repr(s.name));
    offset += s.size;
  }
  if (c.embedding.empty()) throw ModelLoadError(where + "the embedding layout is empty");
  return c;
}

ModelInfo ModelInfo::from_metadata(const std::map<std::string, std::string>& metadata, const std::string& source) {
  const auto it = metadata.find("admpff.contract");
  if (it == metadata.end())
    throw ModelLoadError(source + " carries no admpff contract in its metadata (was it exported with admpff-export?)");
  ModelInfo info;
  info.contract = InputContract::from_json(it->second, source);
  auto get = [&](const char* key, const char* fallback) {
    const auto found = metadata.find(key);
    return found == metadata.end() ? std::string(fallback) : found->second;
  };
  info.precision = get("admpff.precision", "unknown");
  info.checkpoint_sha256 = get("admpff.checkpoint_sha256", "");
  info.version = get("admpff.version", "unknown");
  info.tensorrt_compatible = get("admpff.tensorrt_compatible", "true") == "true";
  info.raw = metadata;
  return info;
}

}  // namespace admpff
