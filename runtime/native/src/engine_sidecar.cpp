#include "admpff/engine_sidecar.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <sstream>

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "admpff/error.hpp"
#include "admpff/files.hpp"
#include "pyrepr.hpp"

namespace admpff {

using detail::base_name;
using detail::py_repr;
using nlohmann::json;

namespace {

constexpr int kSidecarFormat = 1;

std::string as_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// shlex.quote: leave safe words alone, otherwise wrap in single quotes.
std::string shell_quote(const std::string& s) {
  if (s.empty()) return "''";
  const bool safe = std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '@' || c == '%' || c == '+' || c == '=' || c == ':' || c == ',' ||
           c == '.' || c == '/' || c == '-';
  });
  if (safe) return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
  return out + "'";
}

// '10.3.0.30' -> (10, 3, 0): plans are tied to the TensorRT release (major.minor.patch).
std::vector<long> release(const std::string& version) {
  std::vector<long> parts;
  std::string trimmed = version;
  trimmed.erase(0, trimmed.find_first_not_of(" \t\n"));
  trimmed.erase(trimmed.find_last_not_of(" \t\n") + 1);
  std::stringstream ss(trimmed);
  std::string token;
  while (parts.size() < 3 && std::getline(ss, token, '.')) {
    std::string digits;
    for (char c : token)
      if (std::isdigit(static_cast<unsigned char>(c))) digits += c;
    parts.push_back(digits.empty() ? 0 : std::stol(digits));
  }
  return parts;
}

std::string norm_gpu(const std::string& name) {
  std::stringstream ss(name);
  std::string word, out;
  while (ss >> word) out += (out.empty() ? "" : " ") + word;
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

}  // namespace

EngineSidecar EngineSidecar::from_json(const std::string& text, const std::string& source) {
  json d;
  try {
    d = json::parse(text);
  } catch (const json::exception& exc) {
    throw SidecarError(source + " is not valid JSON: " + exc.what());
  }
  if (!d.is_object()) throw SidecarError(source + " is not a JSON object");
  EngineSidecar s;
  if (d.contains("format")) {
    const json& fmt = d["format"];
    if (!fmt.is_number_integer() || fmt.get<long>() > kSidecarFormat)
      throw SidecarError(source + " has format " + (fmt.is_string() ? py_repr(fmt.get<std::string>()) : fmt.dump()) +
                         "; this admpff reads format <= " + std::to_string(kSidecarFormat) +
                         " (upgrade admpff or rebuild the engine)");
    s.format = fmt.get<int>();
  }
  std::vector<std::string> missing;
  for (const char* key : {"tensorrt_version", "gpu_name", "compute_capability", "precision", "onnx_precision", "batch",
                          "onnx_sha256", "metadata"})
    if (!d.contains(key)) missing.emplace_back(key);
  if (!missing.empty()) throw SidecarError(source + " lacks " + py_repr(missing));
  try {
    s.tensorrt_version = as_text(d["tensorrt_version"]);
    s.gpu_name = as_text(d["gpu_name"]);
    s.compute_capability = as_text(d["compute_capability"]);
    s.precision = as_text(d["precision"]);
    s.onnx_precision = as_text(d["onnx_precision"]);
    s.onnx_sha256 = as_text(d["onnx_sha256"]);
    const auto batch = d["batch"].get<std::vector<int>>();
    if (batch.size() != 3) throw SidecarError(source + " is malformed: batch must be [min, opt, max]");
    std::copy(batch.begin(), batch.end(), s.batch.begin());
    if (!d["metadata"].is_object()) throw SidecarError(source + " is malformed: metadata is not an object");
    for (const auto& item : d["metadata"].items()) s.metadata[item.key()] = as_text(item.value());
    if (d.contains("onnx_path") && d["onnx_path"].is_string()) s.onnx_path = d["onnx_path"].get<std::string>();
    if (d.contains("requested_precision") && d["requested_precision"].is_string())
      s.requested_precision = d["requested_precision"].get<std::string>();
    if (d.contains("dla_core") && !d["dla_core"].is_null()) s.dla_core = d["dla_core"].get<int>();
    if (d.contains("workspace_gb") && !d["workspace_gb"].is_null()) s.workspace_gb = d["workspace_gb"].get<double>();
  } catch (const json::exception& exc) {
    throw SidecarError(source + " is malformed: " + exc.what());
  }
  return s;
}

ModelInfo EngineSidecar::model_info(const std::string& source) const {
  ModelInfo info = ModelInfo::from_metadata(metadata, source);
  info.precision = precision;  // what the engine computes in (an FP32 ONNX built with the FP16 flag runs FP16)
  return info;
}

std::string sidecar_path(const std::string& engine_path) { return engine_path + ".json"; }

EngineSidecar read_sidecar(const std::string& engine_path) {
  const std::string path = sidecar_path(engine_path);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw SidecarError(base_name(engine_path) + " has no sidecar " + base_name(path) +
                       ": engines built with admpff-build-engine carry one (it holds the input contract and what the "
                       "engine was built for); rebuild the engine with admpff-build-engine");
  std::string text;
  try {
    text = read_file(path);
  } catch (const Error& exc) {
    throw SidecarError(std::string("cannot read ") + base_name(path) + ": " + exc.what());
  }
  return EngineSidecar::from_json(text, base_name(path));
}

std::string rebuild_command(const EngineSidecar& sidecar, const std::string& engine_path) {
  const std::string onnx = sidecar.onnx_path.empty() ? "<model.onnx>" : sidecar.onnx_path;
  const std::string engine = engine_path.empty() ? "<model.engine>" : engine_path;
  std::vector<std::string> args = {"admpff-build-engine", onnx, "--out", engine, "--batch",
                                   std::to_string(sidecar.batch[0]) + "," + std::to_string(sidecar.batch[1]) + "," +
                                       std::to_string(sidecar.batch[2])};
  if (!sidecar.requested_precision.empty() && sidecar.requested_precision != "auto") {
    args.emplace_back("--precision");
    args.push_back(sidecar.requested_precision);
  }
  if (sidecar.dla_core) {
    args.emplace_back("--dla");
    args.push_back(std::to_string(*sidecar.dla_core));
  }
  if (sidecar.workspace_gb && *sidecar.workspace_gb != 0.0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", *sidecar.workspace_gb);
    args.emplace_back("--workspace");
    args.emplace_back(buf);
  }
  std::string out;
  for (const auto& a : args) out += (out.empty() ? "" : " ") + shell_quote(a);
  return out;
}

void check_compatible(const EngineSidecar& sidecar, const std::string& runtime_tensorrt_version,
                      const std::string& gpu_name, const std::string& compute_capability,
                      const std::string& expected_onnx_sha, const std::string& engine_path) {
  std::vector<std::string> problems;
  if (release(sidecar.tensorrt_version) != release(runtime_tensorrt_version))
    problems.push_back("TensorRT " + sidecar.tensorrt_version + " built it, but this runtime has TensorRT " +
                       runtime_tensorrt_version);
  if (sidecar.compute_capability != compute_capability)
    problems.push_back("it was built for compute capability " + sidecar.compute_capability + " (" + sidecar.gpu_name +
                       "), but this GPU is " + compute_capability + " (" + gpu_name + ")");
  else if (norm_gpu(sidecar.gpu_name) != norm_gpu(gpu_name))
    problems.push_back("it was built on a " + sidecar.gpu_name + ", but this GPU is a " + gpu_name);
  if (!expected_onnx_sha.empty() && expected_onnx_sha != sidecar.onnx_sha256)
    problems.push_back("it was built from an ONNX with sha256 " + sidecar.onnx_sha256.substr(0, 12) +
                       "..., not the expected " + expected_onnx_sha.substr(0, 12) + "...");
  if (problems.empty()) return;
  std::string joined;
  for (const auto& p : problems) joined += (joined.empty() ? "" : "; ") + p;
  const std::string name = engine_path.empty() ? "the engine" : base_name(engine_path);
  throw EngineMismatchError(name + " does not match this device: " + joined +
                            ". Rebuild it here: " + rebuild_command(sidecar, engine_path));
}

}  // namespace admpff
