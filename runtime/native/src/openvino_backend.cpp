// OpenVINO backend: .onnx (FP32, FP16, INT8 Q/DQ) and .xml files, dynamic batch, one synchronous request.
#include <algorithm>
#include <cstring>
#include <set>

#include <openvino/frontend/manager.hpp>
#include <openvino/openvino.hpp>

#include "admpff/error.hpp"
#include "backend.hpp"
#include "onnx_metadata.hpp"
#include "pyrepr.hpp"

namespace admpff::detail {

namespace {

ov::element::Type precision_type(InferencePrecision p) {
  switch (p) {
    case InferencePrecision::F32: return ov::element::f32;
    case InferencePrecision::BF16: return ov::element::bf16;
    case InferencePrecision::F16: return ov::element::f16;
    case InferencePrecision::Auto: break;
  }
  return ov::element::dynamic;
}

std::map<std::string, std::string> framework_metadata(const std::shared_ptr<ov::Model>& model) {
  // ONNX metadata_props land in rt_info["framework"] (OpenVINO's ONNX frontend; kept by ovc in .xml files).
  std::map<std::string, std::string> meta;
  if (!model->has_rt_info("framework")) return meta;
  const auto framework = model->get_rt_info<ov::AnyMap>("framework");
  for (const auto& kv : framework) {
    try {
      meta[kv.first] = kv.second.as<std::string>();
    } catch (const std::exception&) {
      // a non-string entry is not ours
    }
  }
  return meta;
}

class OpenVinoBackend final : public Backend {
 public:
  OpenVinoBackend(const std::string& path, const EmbedderOptions& options) : name_(base_name(path)) {
    std::shared_ptr<ov::Model> model;
    try {
      model = read(path);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& exc) {
      throw ModelLoadError("cannot load " + name_ + " with OpenVINO: " + first_line(exc.what()));
    }
    info_ = ModelInfo::from_metadata(framework_metadata(model), name_);
    check_io(*model);
    ov::AnyMap config;
    // One synchronous request at a time: the latency hint gives it every thread in one stream.
    config.emplace(ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY));
    if (options.inference_precision != InferencePrecision::Auto)
      config.emplace(ov::hint::inference_precision(precision_type(options.inference_precision)));
    if (options.threads > 0) config.emplace(ov::inference_num_threads(options.threads));
    try {
      compiled_ = core_.compile_model(model, options.openvino_device, config);
      request_ = compiled_.create_infer_request();
    } catch (const std::exception& exc) {
      throw ModelLoadError("cannot compile " + name_ + " for OpenVINO " + options.openvino_device + ": " +
                           first_line(exc.what()));
    }
    device_ = options.openvino_device;
    try {
      precision_ = compiled_.get_property(ov::hint::inference_precision).get_type_name();
    } catch (const std::exception&) {
      precision_ = to_string(options.inference_precision);
    }
    try {
      threads_ = compiled_.get_property(ov::inference_num_threads);
    } catch (const std::exception&) {
      threads_ = options.threads;
    }
  }

  const ModelInfo& info() const override { return info_; }
  int max_batch() const override { return fixed_batch_; }

  void infer(const float* images, const int32_t* codes, std::size_t n, float* out) override {
    const InputContract& c = info_.contract;
    const std::size_t per_image = 3 * static_cast<std::size_t>(c.height) * static_cast<std::size_t>(c.width);
    const std::size_t dim = static_cast<std::size_t>(c.embedding_dim());
    std::size_t b = n;
    const float* image_ptr = images;
    if (fixed_batch_ > 0 && n < static_cast<std::size_t>(fixed_batch_)) {  // a static-batch file: pad with zeros
      b = static_cast<std::size_t>(fixed_batch_);
      padded_.assign(b * per_image, 0.0f);
      std::copy(images, images + n * per_image, padded_.begin());
      image_ptr = padded_.data();
    }
    try {
      request_.set_tensor(c.images_input, ov::Tensor(ov::element::f32, ov::Shape{b, 3, static_cast<std::size_t>(c.height),
                                                                                  static_cast<std::size_t>(c.width)},
                                                     const_cast<float*>(image_ptr)));
      ov::Tensor modality(modality_type_, ov::Shape{b});
      if (modality_type_ == ov::element::i64) {
        auto* dst = modality.data<int64_t>();
        for (std::size_t i = 0; i < b; ++i) dst[i] = i < n ? codes[i] : 0;
      } else {
        auto* dst = modality.data<int32_t>();
        for (std::size_t i = 0; i < b; ++i) dst[i] = i < n ? codes[i] : 0;
      }
      request_.set_tensor(c.modality_input, modality);
      request_.infer();
      const ov::Tensor result = request_.get_tensor(c.output_name);
      const ov::Shape shape = result.get_shape();
      if (shape.size() != 2 || shape[0] != b || shape[1] != dim)
        throw InferenceError(name_ + " returned shape " + shape.to_string() + ", expected [" + std::to_string(b) + "," +
                             std::to_string(dim) + "]");
      if (result.get_element_type() == ov::element::f32) {
        std::memcpy(out, result.data<const float>(), n * dim * sizeof(float));
      } else {
        const ov::Tensor as_f32(ov::element::f32, shape);
        result.copy_to(as_f32);
        std::memcpy(out, as_f32.data<const float>(), n * dim * sizeof(float));
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& exc) {
      throw InferenceError("OpenVINO inference on " + name_ + " failed: " + first_line(exc.what()));
    }
  }

  std::string describe() const override {
    return "openvino[" + device_ + ", " + precision_ + ", " + std::to_string(threads_) + " threads] " + name_ + " (" +
           info_.precision + ")";
  }

 private:
  // An .onnx file goes to the ONNX frontend only: Core::read_model would offer a file that is not ONNX to every
  // frontend in turn, and the TensorFlow one writes parse errors to stderr before the real message.
  std::shared_ptr<ov::Model> read(const std::string& path) {
    const std::string suffix = path.size() >= 5 ? path.substr(path.size() - 5) : "";
    if (suffix != ".onnx" && suffix != ".ONNX") return core_.read_model(path);
    // ONNX Runtime's QOperator CPU-INT8 file (QLinearConv with uint8 activations) crashes OpenVINO 2026.4's ONNX
    // reader with a segmentation fault (checked), so it is refused from its metadata before OpenVINO sees it.
    if (onnx_metadata(path)["admpff.precision"] == "int8-cpu")
      throw ModelLoadError("cannot load " + name_ + " with OpenVINO: it is ONNX Runtime's QOperator CPU-INT8 file, "
                           "which OpenVINO cannot read; give OpenVINO the Q/DQ file (.int8.onnx)");
    ov::frontend::FrontEndManager manager;
    const auto frontend = manager.load_by_framework("onnx");
    if (!frontend || !frontend->supported(path))
      throw ModelLoadError("cannot load " + name_ + " with OpenVINO: not an ONNX model (corrupt or truncated?)");
    return frontend->convert(frontend->load(path));
  }

  void check_io(const ov::Model& model) {
    const InputContract& c = info_.contract;
    std::set<std::string> inputs, outputs;
    for (const auto& port : model.inputs()) inputs.insert(port.get_any_name());
    bool has_output = false;
    for (const auto& port : model.outputs()) {
      outputs.insert(port.get_any_name());
      has_output = has_output || port.get_names().count(c.output_name) > 0;
    }
    const std::set<std::string> expected = {c.images_input, c.modality_input};
    if (inputs != expected || !has_output)
      throw ModelLoadError(name_ + " has inputs " + py_repr(std::vector<std::string>(inputs.begin(), inputs.end())) +
                           " and outputs " + py_repr(std::vector<std::string>(outputs.begin(), outputs.end())) +
                           "; expected inputs " + py_repr(std::vector<std::string>{c.images_input, c.modality_input}) +
                           " and output " + py_repr(c.output_name));
    const ov::PartialShape shape = model.input(c.images_input).get_partial_shape();
    const bool rank4 = shape.rank().is_static() && shape.rank().get_length() == 4;
    if (!rank4 || shape[1] != ov::Dimension(3) || shape[2] != ov::Dimension(c.height) || shape[3] != ov::Dimension(c.width))
      throw ModelLoadError(name_ + " takes images of shape " + shape.to_string() + ", but its contract says [batch, 3, " +
                           std::to_string(c.height) + ", " + std::to_string(c.width) + "]");
    if (shape[0].is_static()) fixed_batch_ = static_cast<int>(shape[0].get_length());
    modality_type_ = model.input(c.modality_input).get_element_type();
    if (modality_type_ != ov::element::i32 && modality_type_ != ov::element::i64)
      throw ModelLoadError(name_ + " takes modality as " + modality_type_.get_type_name() + ", expected int32");
    const ov::PartialShape out_shape = model.output(c.output_name).get_partial_shape();
    if (out_shape.rank().is_static() &&
        (out_shape.rank().get_length() != 2 ||
         (out_shape[1].is_static() && out_shape[1].get_length() != c.embedding_dim())))
      throw ModelLoadError(name_ + " emits " + out_shape.to_string() + ", expected [batch, " +
                           std::to_string(c.embedding_dim()) + "]");
  }

  ov::Core core_;
  std::string name_;
  ModelInfo info_;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
  ov::element::Type modality_type_ = ov::element::i32;
  int fixed_batch_ = 0;
  std::vector<float> padded_;
  std::string device_, precision_;
  int threads_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_openvino_backend(const std::string& path, const EmbedderOptions& options) {
  return std::make_unique<OpenVinoBackend>(path, options);
}

}  // namespace admpff::detail
