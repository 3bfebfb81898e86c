#include "admpff/embedder.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <sstream>

#include <sys/stat.h>

#include "admpff/engine_sidecar.hpp"
#include "admpff/error.hpp"
#include "admpff/preprocess.hpp"
#include "backend.hpp"
#include "pyrepr.hpp"

namespace admpff {

using detail::base_name;

namespace detail {

std::string first_line(const std::string& message) {
  std::stringstream ss(message);
  std::string line, first;
  while (std::getline(ss, line)) {
    line.erase(0, line.find_first_not_of(" \t\r"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (line.empty()) continue;
    if (first.empty()) first = line;
    // OpenVINO prefixes its messages with the throwing source location; the reason comes after.
    if (line.rfind("Exception from ", 0) == 0 || line.rfind("Check '", 0) == 0) continue;
    return line;
  }
  return first.empty() ? std::string("unknown error") : first;
}

}  // namespace detail

InferencePrecision parse_inference_precision(const std::string& name) {
  std::string key = name;
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (key == "auto") return InferencePrecision::Auto;
  if (key == "f32" || key == "fp32") return InferencePrecision::F32;
  if (key == "bf16") return InferencePrecision::BF16;
  if (key == "f16" || key == "fp16") return InferencePrecision::F16;
  throw InvalidInputError("unknown inference precision " + detail::py_repr(name) + "; expected f32, bf16, f16 or auto");
}

const char* to_string(InferencePrecision precision) {
  switch (precision) {
    case InferencePrecision::F32: return "f32";
    case InferencePrecision::BF16: return "bf16";
    case InferencePrecision::F16: return "f16";
    case InferencePrecision::Auto: break;
  }
  return "auto";
}

void l2_normalize_rows(Matrix& m) {
  for (std::size_t i = 0; i < m.rows; ++i) {
    float* r = m.row(i);
    double sum = 0.0;
    for (std::size_t j = 0; j < m.cols; ++j) sum += static_cast<double>(r[j]) * r[j];
    const float norm = std::max(static_cast<float>(std::sqrt(sum)), 1e-12f);
    for (std::size_t j = 0; j < m.cols; ++j) r[j] /= norm;
  }
}

struct Embedder::Impl {
  std::string path;
  EmbedderOptions options;
  std::unique_ptr<detail::Backend> backend;
  std::size_t empty_crops = 0;
  std::vector<float> batch;  // reused preprocessing buffer

  int step() const {
    const int limit = backend->max_batch();
    if (options.max_batch > 0) return limit > 0 ? std::min(limit, options.max_batch) : options.max_batch;
    return limit;
  }
};

namespace {

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string lower_suffix(const std::string& path) {
  const std::string name = base_name(path);
  const auto dot = name.find_last_of('.');
  if (dot == std::string::npos) return "";
  std::string s = name.substr(dot);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace

Embedder::Embedder(const std::string& model_path, const EmbedderOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->path = model_path;
  impl_->options = options;
  const std::string suffix = lower_suffix(model_path);
  const std::string name = base_name(model_path);
  if (suffix == ".engine" || suffix == ".plan") {
    if (!is_file(model_path)) throw ModelLoadError("engine file not found: " + model_path);
    const EngineSidecar sidecar = read_sidecar(model_path);
    const ModelInfo info = sidecar.model_info(name);
    impl_->backend = detail::make_tensorrt_backend(model_path, options, sidecar, info);
  } else if (suffix == ".onnx" || suffix == ".xml") {
    if (!is_file(model_path)) throw ModelLoadError("model file not found: " + model_path);
    impl_->backend = detail::make_openvino_backend(model_path, options);
  } else {
    throw ModelLoadError("unsupported model file " + detail::py_repr(name) +
                         ": expected .onnx or .xml (OpenVINO) or .engine/.plan (TensorRT)");
  }
}

Embedder::~Embedder() = default;
Embedder::Embedder(Embedder&&) noexcept = default;
Embedder& Embedder::operator=(Embedder&&) noexcept = default;

const ModelInfo& Embedder::info() const { return impl_->backend->info(); }
const InputContract& Embedder::contract() const { return impl_->backend->info().contract; }
int Embedder::dim() const { return contract().embedding_dim(); }
int Embedder::max_batch() const { return impl_->step(); }
std::string Embedder::describe() const { return impl_->backend->describe(); }
std::size_t Embedder::empty_crops() const { return impl_->empty_crops; }

Matrix Embedder::embed(const std::vector<cv::Mat>& crops, const std::string& modality) {
  return embed(crops, std::vector<std::string>(crops.size(), modality));
}

Matrix Embedder::embed(const std::vector<cv::Mat>& crops, const std::vector<std::string>& modalities) {
  const std::size_t n = crops.size();
  if (modalities.size() != n)
    throw InvalidInputError(std::to_string(n) + " crops but " + std::to_string(modalities.size()) + " modalities");
  std::vector<int32_t> codes(n);
  for (std::size_t i = 0; i < n; ++i) codes[i] = contract().modality_code(modalities[i]);
  Matrix out;
  out.rows = n;
  out.cols = static_cast<std::size_t>(dim());
  out.data.assign(out.rows * out.cols, 0.0f);
  if (n == 0) return out;

  std::vector<cv::Mat> valid;
  std::vector<std::size_t> where;
  std::vector<int32_t> valid_codes;
  for (std::size_t i = 0; i < n; ++i) {
    if (is_empty_crop(crops[i])) {
      ++impl_->empty_crops;  // a zero row: cosine 0 with everything, so it never matches
      continue;
    }
    validate_crop(crops[i], static_cast<long>(i));  // name a bad crop by its index in the caller's list
    valid.push_back(crops[i]);
    where.push_back(i);
    valid_codes.push_back(codes[i]);
  }
  if (valid.empty()) return out;
  crops_to_batch(valid, contract(), impl_->batch);
  const Matrix rows = embed_preprocessed(impl_->batch, valid_codes);
  for (std::size_t k = 0; k < where.size(); ++k)
    std::copy(rows.row(k), rows.row(k) + out.cols, out.row(where[k]));
  return out;
}

Matrix Embedder::embed_preprocessed(const std::vector<float>& images, const std::vector<int32_t>& modality_codes) {
  const InputContract& c = contract();
  const std::size_t n = modality_codes.size();
  const std::size_t per_image = 3 * static_cast<std::size_t>(c.height) * static_cast<std::size_t>(c.width);
  if (images.size() != n * per_image)
    throw InvalidInputError("images hold " + std::to_string(images.size()) + " floats, expected " +
                            std::to_string(n) + " x 3 x " + std::to_string(c.height) + " x " + std::to_string(c.width));
  Matrix out;
  out.rows = n;
  out.cols = static_cast<std::size_t>(dim());
  out.data.resize(n * out.cols);
  const std::size_t step = impl_->step() > 0 ? static_cast<std::size_t>(impl_->step()) : std::max<std::size_t>(n, 1);
  for (std::size_t start = 0; start < n; start += step) {
    const std::size_t count = std::min(step, n - start);
    impl_->backend->infer(images.data() + start * per_image, modality_codes.data() + start, count, out.row(start));
  }
  // The graph already L2-normalises; renormalise so reduced-precision outputs are exactly unit.
  l2_normalize_rows(out);
  return out;
}

namespace detail {

#ifndef ADMPFF_HAVE_OPENVINO
std::unique_ptr<Backend> make_openvino_backend(const std::string& path, const EmbedderOptions&) {
  throw ModelLoadError("cannot load " + base_name(path) +
                       ": this admpff build has no OpenVINO backend (reconfigure with -DADMPFF_WITH_OPENVINO=ON "
                       "after pip install openvino)");
}
#endif

#ifndef ADMPFF_HAVE_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(const std::string& path, const EmbedderOptions&, const EngineSidecar&,
                                               const ModelInfo&) {
  throw ModelLoadError("cannot load " + base_name(path) +
                       ": this admpff build has no TensorRT backend (reconfigure with -DADMPFF_WITH_TENSORRT=ON on a "
                       "machine with TensorRT >= 8.5 and CUDA)");
}
#endif

}  // namespace detail

}  // namespace admpff
