// An embedder opened from a model path; the backend is chosen by suffix:
//   .engine / .plan -> TensorRT (with the engine's JSON sidecar ENGINE.json), .onnx / .xml -> OpenVINO.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "admpff/contract.hpp"

namespace admpff {

/// OpenVINO's inference precision: f32 (exact; what the parity tests use), bf16, f16, or the device's
/// default (auto: bf16 on CPUs with AMX/AVX512-BF16, otherwise f32).
enum class InferencePrecision { Auto, F32, BF16, F16 };

/// "auto", "f32", "bf16", "f16" -> InferencePrecision; InvalidInputError otherwise.
InferencePrecision parse_inference_precision(const std::string& name);
const char* to_string(InferencePrecision precision);

struct EmbedderOptions {
  InferencePrecision inference_precision = InferencePrecision::Auto;  ///< OpenVINO only
  int threads = 0;                    ///< OpenVINO inference threads; 0: the plugin's default
  std::string openvino_device = "CPU";
  int cuda_device = 0;                ///< TensorRT only
  bool check_device = true;           ///< TensorRT: refuse an engine whose sidecar names another GPU/TensorRT
  int max_batch = 0;                  ///< split larger batches; 0: the model's limit (engine profile) or none
};

/// Row-major float matrix: `rows` embeddings of `cols` floats.
struct Matrix {
  std::size_t rows = 0;
  std::size_t cols = 0;
  std::vector<float> data;

  const float* row(std::size_t i) const { return data.data() + i * cols; }
  float* row(std::size_t i) { return data.data() + i * cols; }
};

/// Turns person crops into L2-normalised embeddings.  Not thread-safe: use one Embedder per thread.
class Embedder {
 public:
  explicit Embedder(const std::string& model_path, const EmbedderOptions& options = {});
  ~Embedder();
  Embedder(Embedder&&) noexcept;
  Embedder& operator=(Embedder&&) noexcept;
  Embedder(const Embedder&) = delete;
  Embedder& operator=(const Embedder&) = delete;

  const ModelInfo& info() const;
  const InputContract& contract() const;
  int dim() const;
  /// Largest batch one inference takes (larger inputs are split); 0 when unlimited.
  int max_batch() const;
  /// e.g. "openvino[CPU, f32, 2 threads] m.onnx (fp32)".
  std::string describe() const;

  /// BGR crops of any size, one modality for all -> [n, dim] unit rows in input order.  A zero-area crop
  /// gives a zero row and is counted in empty_crops(); an empty list gives a 0 x dim matrix.
  Matrix embed(const std::vector<cv::Mat>& crops, const std::string& modality);
  /// One modality per crop.
  Matrix embed(const std::vector<cv::Mat>& crops, const std::vector<std::string>& modalities);
  /// Already preprocessed float32 NCHW 0..255 images (n * 3 * H * W floats) and modality codes.
  Matrix embed_preprocessed(const std::vector<float>& images, const std::vector<int32_t>& modality_codes);

  /// Zero-area crops seen so far.
  std::size_t empty_crops() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// L2-normalise each row in place (rows with norm < 1e-12 are divided by 1e-12, i.e. stay ~zero).
void l2_normalize_rows(Matrix& m);

}  // namespace admpff
