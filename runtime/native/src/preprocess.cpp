#include "admpff/preprocess.hpp"

#include <cmath>
#include <string>

#include <opencv2/imgproc.hpp>

#include "admpff/error.hpp"

namespace admpff {

namespace {

int interpolation_flag(const std::string& name) {
  if (name == "linear") return cv::INTER_LINEAR;
  if (name == "area") return cv::INTER_AREA;
  if (name == "cubic") return cv::INTER_CUBIC;
  throw InvalidInputError("unknown resize interpolation '" + name + "'");
}

// numpy's np.clip(x, 0, 255).astype(np.uint8): clip, then truncate towards zero (floor, as x >= 0 here).
cv::Mat clip_to_uint8(const cv::Mat& crop) {
  cv::Mat wide;
  crop.convertTo(wide, CV_64F);
  cv::Mat values = wide.reshape(1);  // one channel: forEach<double> then visits every value
  values.forEach<double>([](double& v, const int*) { v = std::floor(std::min(255.0, std::max(0.0, v))); });
  cv::Mat out;
  wide.convertTo(out, CV_8U);  // exact: every value is an integer in 0..255
  return out;
}

}  // namespace

bool is_empty_crop(const cv::Mat& crop) { return crop.empty() || crop.rows == 0 || crop.cols == 0; }

cv::Mat validate_crop(const cv::Mat& crop, long index) {
  const std::string where = index < 0 ? "crop" : "crop #" + std::to_string(index);
  if (crop.dims > 2) throw InvalidInputError(where + " has " + std::to_string(crop.dims) + " dimensions, expected HxWx3 BGR");
  const int channels = crop.channels();
  if (channels != 1 && channels != 3 && channels != 4)
    throw InvalidInputError(where + " has " + std::to_string(channels) + " channels, expected HxWx3 BGR");
  if (is_empty_crop(crop))
    throw InvalidInputError(where + " is empty (" + std::to_string(crop.rows) + "x" + std::to_string(crop.cols) +
                            " pixels)");
  cv::Mat out = crop;
  if (channels == 1) {
    cv::cvtColor(crop, out, cv::COLOR_GRAY2BGR);  // a raw thermal frame: replicate to 3 channels
  } else if (channels == 4) {
    cv::cvtColor(crop, out, cv::COLOR_BGRA2BGR);  // drop alpha: the first three channels
  }
  if (out.depth() != CV_8U) out = clip_to_uint8(out);
  return out;
}

cv::Mat resize_crop(const cv::Mat& crop_bgr, const InputContract& contract) {
  const cv::Mat crop = validate_crop(crop_bgr);
  cv::Mat resized;
  cv::resize(crop, resized, cv::Size(contract.width, contract.height), 0, 0,
             interpolation_flag(contract.resize_interpolation));
  if (contract.channel_order == "RGB") cv::cvtColor(resized, resized, cv::COLOR_BGR2RGB);
  return resized;
}

void crops_to_batch(const std::vector<cv::Mat>& crops_bgr, const InputContract& contract, std::vector<float>& out) {
  const std::size_t plane = static_cast<std::size_t>(contract.height) * static_cast<std::size_t>(contract.width);
  out.resize(crops_bgr.size() * 3 * plane);
  const int interpolation = interpolation_flag(contract.resize_interpolation);
  cv::Mat resized;
  for (std::size_t i = 0; i < crops_bgr.size(); ++i) {
    const cv::Mat crop = validate_crop(crops_bgr[i], static_cast<long>(i));
    cv::resize(crop, resized, cv::Size(contract.width, contract.height), 0, 0, interpolation);
    // HWC -> CHW: write each channel straight into its plane of the output tensor.
    std::vector<cv::Mat> planes(3);
    float* base = out.data() + i * 3 * plane;
    const bool rgb = contract.channel_order == "RGB";
    for (int c = 0; c < 3; ++c) {
      const int target = rgb ? 2 - c : c;  // BGR source channel c lands in plane 2-c for RGB
      planes[static_cast<std::size_t>(c)] = cv::Mat(contract.height, contract.width, CV_32F, base + static_cast<std::size_t>(target) * plane);
    }
    std::vector<cv::Mat> u8(3);
    cv::split(resized, u8);
    for (int c = 0; c < 3; ++c) u8[static_cast<std::size_t>(c)].convertTo(planes[static_cast<std::size_t>(c)], CV_32F);
  }
}

}  // namespace admpff
