// The interface each inference backend implements (internal: no backend type leaks into public headers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "admpff/contract.hpp"
#include "admpff/embedder.hpp"
#include "admpff/engine_sidecar.hpp"

namespace admpff::detail {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelInfo& info() const = 0;
  /// Largest batch one infer() call takes; 0 when unlimited.
  virtual int max_batch() const = 0;
  /// images: n x 3 x H x W floats (0..255), codes: n modality codes -> out: n x dim floats.
  virtual void infer(const float* images, const int32_t* codes, std::size_t n, float* out) = 0;
  virtual std::string describe() const = 0;
};

/// The first informative line of a (possibly multi-line) library message.
std::string first_line(const std::string& message);

std::unique_ptr<Backend> make_openvino_backend(const std::string& path, const EmbedderOptions& options);
std::unique_ptr<Backend> make_tensorrt_backend(const std::string& path, const EmbedderOptions& options,
                                               const EngineSidecar& sidecar, const ModelInfo& info);

}  // namespace admpff::detail
