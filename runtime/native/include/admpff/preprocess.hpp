// Crop preprocessing, step for step the Python runtime's (runtime/preprocess.py): resize with the contract's
// interpolation to height x width, channel order from the contract, float32 NCHW with values 0..255
// (normalisation is inside the graph).
#pragma once

#include <cstddef>
#include <vector>

#include <opencv2/core.hpp>

#include "admpff/contract.hpp"

namespace admpff {

/// True when the crop has no pixels (an empty Mat, zero width or zero height).
bool is_empty_crop(const cv::Mat& crop);

/// validate_crop: 1 channel -> replicated to 3, 4 channels -> the first 3, non-uint8 -> clipped to 0..255
/// and truncated (numpy's clip + astype).  InvalidInputError for anything that is not an image;
/// `index` (or -1) names the crop in the message.
cv::Mat validate_crop(const cv::Mat& crop, long index = -1);

/// BGR crop of any size -> height x width x 3 uint8 in the contract's channel order.
cv::Mat resize_crop(const cv::Mat& crop_bgr, const InputContract& contract);

/// BGR crops -> float32 NCHW 0..255, written to `out` (resized to n * 3 * height * width).
void crops_to_batch(const std::vector<cv::Mat>& crops_bgr, const InputContract& contract, std::vector<float>& out);

}  // namespace admpff
