// The JSON sidecar next to a TensorRT engine (model.engine -> model.engine.json), as written by
// admpff-build-engine (export/engine_builder.py).  Same reading rules and refusal wording as
// runtime/engine_sidecar.py.
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "admpff/contract.hpp"

namespace admpff {

struct EngineSidecar {
  std::string tensorrt_version;
  std::string gpu_name;
  std::string compute_capability;  ///< "8.7" (Orin), "9.0" (H100) ...
  std::string precision;           ///< engine precision: fp32 | fp16 | int8
  std::string onnx_precision;
  std::array<int, 3> batch{};      ///< optimisation profile (min, opt, max)
  std::string onnx_sha256;
  std::map<std::string, std::string> metadata;  ///< the ONNX's admpff.* metadata (contract included)
  std::string onnx_path;
  std::string requested_precision = "auto";
  std::optional<int> dla_core;
  std::optional<double> workspace_gb;
  int format = 1;

  /// SidecarError naming `source` when the text is not a usable sidecar.
  static EngineSidecar from_json(const std::string& text, const std::string& source = "sidecar");
  /// The ModelInfo carried over from the ONNX metadata, precision being the engine's.
  ModelInfo model_info(const std::string& source = "engine") const;
};

/// "<engine>.json" next to the engine.
std::string sidecar_path(const std::string& engine_path);
/// Read the engine's sidecar; SidecarError (with the rebuild advice) when absent or unreadable.
EngineSidecar read_sidecar(const std::string& engine_path);
/// The admpff-build-engine command line that rebuilds the engine on this device.
std::string rebuild_command(const EngineSidecar& sidecar, const std::string& engine_path = "");
/// Throw EngineMismatchError unless the engine was built for this TensorRT release and GPU model.
void check_compatible(const EngineSidecar& sidecar, const std::string& runtime_tensorrt_version,
                      const std::string& gpu_name, const std::string& compute_capability,
                      const std::string& expected_onnx_sha = "", const std::string& engine_path = "");

}  // namespace admpff
