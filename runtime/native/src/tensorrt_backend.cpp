// TensorRT backend, one code path for TensorRT 8.5 to 11: the name-based API (getNbIOTensors, getIOTensorName,
// setInputShape, setTensorAddress, enqueueV3).  One CUDA stream; device and pinned host buffers allocated once
// at the optimisation profile's largest batch; the output shape is read from the engine, never assumed.
// The engine is deserialised, not built, so no network-creation flag (explicit batch, strongly typed) is needed.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <type_traits>

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include "admpff/engine_sidecar.hpp"
#include "admpff/error.hpp"
#include "backend.hpp"
#include "pyrepr.hpp"

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR < 5)
#error "admpff's TensorRT backend needs TensorRT >= 8.5 (the name-based enqueueV3 API)"
#endif

namespace admpff::detail {

namespace {

using DimValue = std::remove_reference_t<decltype(nvinfer1::Dims{}.d[0])>;  // int32_t before TensorRT 10, int64_t after

// Keeps TensorRT's last error so a failure can name it (TensorRT reports through the logger, not return values).
class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity > Severity::kERROR) return;
    std::lock_guard<std::mutex> lock(mutex_);
    last_error_ = msg ? msg : "";
  }
  std::string last_error() {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_error_;
  }

 private:
  std::mutex mutex_;
  std::string last_error_;
};

void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess)
    throw InferenceError("CUDA " + what + " failed: " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

// TensorRT objects: `delete` works from 8.0 on (destroy() is gone in 10).
template <typename T>
struct TrtDelete {
  void operator()(T* p) const noexcept { delete p; }
};
template <typename T>
using TrtPtr = std::unique_ptr<T, TrtDelete<T>>;

// getInferLibVersion(): major*1000 + minor*100 + patch up to 8.x, major*10000 + minor*100 + patch from 10.
std::string runtime_version() {
  const long v = getInferLibVersion();
  if (v < 100000) return std::to_string(v / 1000) + "." + std::to_string((v / 100) % 10) + "." + std::to_string(v % 100);
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

std::string dims_text(const nvinfer1::Dims& d) {
  std::string s = "(";
  for (int i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(static_cast<long long>(d.d[i]));
  return s + ")";
}

std::size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    default: return 0;
  }
}

struct DeviceBuffer {
  void* device = nullptr;
  void* host = nullptr;  // pinned
  std::size_t row_bytes = 0;
  std::size_t rows = 0;
};

class TensorRtBackend final : public Backend {
 public:
  TensorRtBackend(const std::string& path, const EmbedderOptions& options, const EngineSidecar& sidecar,
                  const ModelInfo& info)
      : name_(base_name(path)), info_(info), sidecar_(sidecar) {
    check_cuda(cudaSetDevice(options.cuda_device), "cudaSetDevice(" + std::to_string(options.cuda_device) + ")");
    cudaDeviceProp prop{};
    const cudaError_t status = cudaGetDeviceProperties(&prop, options.cuda_device);
    if (status != cudaSuccess)
      throw ModelLoadError("cannot load " + name_ + ": no usable GPU " + std::to_string(options.cuda_device) + " (" +
                           cudaGetErrorString(status) + ")");
    gpu_name_ = prop.name;
    const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    if (options.check_device) check_compatible(sidecar_, runtime_version(), gpu_name_, cc, "", path);
    try {
      load(path);
    } catch (...) {
      release();
      throw;
    }
  }

  ~TensorRtBackend() override { release(); }

  const ModelInfo& info() const override { return info_; }
  int max_batch() const override { return max_batch_; }

  void infer(const float* images, const int32_t* codes, std::size_t n, float* out) override {
    if (n > static_cast<std::size_t>(max_batch_))
      throw InvalidInputError("batch of " + std::to_string(n) + " exceeds the engine's maximum " + std::to_string(max_batch_));
    const std::size_t b = std::max<std::size_t>(n, static_cast<std::size_t>(min_batch_));  // static batch: pad with zeros
    const InputContract& c = info_.contract;
    std::memcpy(images_.host, images, n * images_.row_bytes);
    std::memcpy(modality_.host, codes, n * sizeof(int32_t));
    if (b > n) {
      std::memset(static_cast<char*>(images_.host) + n * images_.row_bytes, 0, (b - n) * images_.row_bytes);
      std::memset(static_cast<char*>(modality_.host) + n * sizeof(int32_t), 0, (b - n) * sizeof(int32_t));
    }
    nvinfer1::Dims image_dims{};
    image_dims.nbDims = 4;
    image_dims.d[0] = static_cast<DimValue>(b);
    image_dims.d[1] = 3;
    image_dims.d[2] = static_cast<DimValue>(c.height);
    image_dims.d[3] = static_cast<DimValue>(c.width);
    nvinfer1::Dims modality_dims{};
    modality_dims.nbDims = 1;
    modality_dims.d[0] = static_cast<DimValue>(b);
    if (!context_->setInputShape(c.images_input.c_str(), image_dims) ||
        !context_->setInputShape(c.modality_input.c_str(), modality_dims))
      throw InferenceError("TensorRT refused batch " + std::to_string(b) + " for " + name_ + ": " + logger_.last_error());
    check_cuda(cudaMemcpyAsync(images_.device, images_.host, b * images_.row_bytes, cudaMemcpyHostToDevice, stream_),
               "copy of the images to the GPU");
    check_cuda(cudaMemcpyAsync(modality_.device, modality_.host, b * sizeof(int32_t), cudaMemcpyHostToDevice, stream_),
               "copy of the modality codes to the GPU");
    if (!context_->enqueueV3(stream_))
      throw InferenceError("TensorRT enqueueV3 failed on " + name_ + ": " + logger_.last_error());
    check_cuda(cudaMemcpyAsync(output_.host, output_.device, b * output_.row_bytes, cudaMemcpyDeviceToHost, stream_),
               "copy of the embeddings from the GPU");
    check_cuda(cudaStreamSynchronize(stream_), "stream synchronisation");
    std::memcpy(out, output_.host, n * output_.row_bytes);
  }

  std::string describe() const override {
    return "tensorrt[" + runtime_version() + ", " + gpu_name_ + "] " + name_ + " (" + sidecar_.precision +
           ", batch <= " + std::to_string(max_batch_) +
           (sidecar_.dla_core ? ", DLA " + std::to_string(*sidecar_.dla_core) : std::string()) + ")";
  }

 private:
  void load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    const std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (plan.empty()) throw ModelLoadError("cannot read " + name_ + " (empty or unreadable)");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw ModelLoadError("cannot create a TensorRT runtime: " + logger_.last_error());
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_)
      throw ModelLoadError("TensorRT " + runtime_version() + " cannot deserialize " + name_ +
                           " (corrupt, or built by another TensorRT); rebuild it with admpff-build-engine");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw ModelLoadError("cannot create an execution context for " + name_ + " (out of GPU memory?)");

    const InputContract& c = info_.contract;
    std::vector<std::string> inputs, outputs;
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      const std::string tensor = engine_->getIOTensorName(i);
      (engine_->getTensorIOMode(tensor.c_str()) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).push_back(tensor);
    }
    std::vector<std::string> sorted_inputs = inputs, expected = {c.images_input, c.modality_input};
    std::sort(sorted_inputs.begin(), sorted_inputs.end());
    std::sort(expected.begin(), expected.end());
    if (sorted_inputs != expected || std::find(outputs.begin(), outputs.end(), c.output_name) == outputs.end() ||
        outputs.size() != 1)
      throw ModelLoadError(name_ + " has inputs " + py_repr(inputs) + " and outputs " + py_repr(outputs) +
                           "; expected inputs " + py_repr(std::vector<std::string>{c.images_input, c.modality_input}) +
                           " and output " + py_repr(c.output_name));
    if (engine_->getTensorDataType(c.images_input.c_str()) != nvinfer1::DataType::kFLOAT ||
        engine_->getTensorDataType(c.modality_input.c_str()) != nvinfer1::DataType::kINT32 ||
        engine_->getTensorDataType(c.output_name.c_str()) != nvinfer1::DataType::kFLOAT)
      throw ModelLoadError(name_ + " does not take float32 images and int32 modality codes to float32 embeddings");

    const nvinfer1::Dims lo = engine_->getProfileShape(c.images_input.c_str(), 0, nvinfer1::OptProfileSelector::kMIN);
    const nvinfer1::Dims hi = engine_->getProfileShape(c.images_input.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
    if (hi.nbDims != 4 || hi.d[1] != 3 || hi.d[2] != c.height || hi.d[3] != c.width)
      throw ModelLoadError(name_ + " takes images " + dims_text(hi) + ", but its contract says [batch, 3, " +
                           std::to_string(c.height) + ", " + std::to_string(c.width) + "]");
    min_batch_ = static_cast<int>(lo.d[0]);
    max_batch_ = static_cast<int>(hi.d[0]);

    // Output shape at the largest batch, from the engine.
    nvinfer1::Dims modality_dims{};
    modality_dims.nbDims = 1;
    modality_dims.d[0] = hi.d[0];
    if (!context_->setInputShape(c.images_input.c_str(), hi) ||
        !context_->setInputShape(c.modality_input.c_str(), modality_dims))
      throw ModelLoadError(name_ + " refuses its own largest batch: " + logger_.last_error());
    const nvinfer1::Dims out = context_->getTensorShape(c.output_name.c_str());
    if (out.nbDims != 2 || out.d[1] != c.embedding_dim())
      throw ModelLoadError(name_ + " emits " + dims_text(out) + ", expected [batch, " + std::to_string(c.embedding_dim()) + "]");

    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream creation");
    const std::size_t rows = static_cast<std::size_t>(max_batch_);
    allocate(images_, rows, 3 * static_cast<std::size_t>(c.height) * static_cast<std::size_t>(c.width) * sizeof(float));
    allocate(modality_, rows, sizeof(int32_t));
    allocate(output_, rows, static_cast<std::size_t>(out.d[1]) * element_size(nvinfer1::DataType::kFLOAT));
    if (!context_->setTensorAddress(c.images_input.c_str(), images_.device) ||
        !context_->setTensorAddress(c.modality_input.c_str(), modality_.device) ||
        !context_->setTensorAddress(c.output_name.c_str(), output_.device))
      throw ModelLoadError("TensorRT refused the buffers of " + name_ + ": " + logger_.last_error());
  }

  void allocate(DeviceBuffer& buffer, std::size_t rows, std::size_t row_bytes) {
    buffer.rows = rows;
    buffer.row_bytes = row_bytes;
    check_cuda(cudaMalloc(&buffer.device, rows * row_bytes), "cudaMalloc of " + std::to_string(rows * row_bytes) + " bytes");
    check_cuda(cudaMallocHost(&buffer.host, rows * row_bytes),
               "cudaMallocHost of " + std::to_string(rows * row_bytes) + " bytes");
  }

  void release() noexcept {
    if (stream_) cudaStreamSynchronize(stream_);
    for (DeviceBuffer* b : {&images_, &modality_, &output_}) {
      if (b->device) cudaFree(b->device);
      if (b->host) cudaFreeHost(b->host);
      b->device = b->host = nullptr;
    }
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
    context_.reset();
    engine_.reset();
    runtime_.reset();
  }

  std::string name_;
  ModelInfo info_;
  EngineSidecar sidecar_;
  std::string gpu_name_;
  Logger logger_;
  TrtPtr<nvinfer1::IRuntime> runtime_;
  TrtPtr<nvinfer1::ICudaEngine> engine_;
  TrtPtr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer images_, modality_, output_;
  int min_batch_ = 1;
  int max_batch_ = 1;
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(const std::string& path, const EmbedderOptions& options,
                                               const EngineSidecar& sidecar, const ModelInfo& info) {
  return std::make_unique<TensorRtBackend>(path, options, sidecar, info);
}

}  // namespace admpff::detail
