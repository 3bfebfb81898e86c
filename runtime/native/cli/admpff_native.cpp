// admpff-native: embed person crops, match them against an admpff-reid gallery, benchmark a model.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>

#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>

#include <nlohmann/json.hpp>

#include "admpff/admpff.hpp"
#include "args.hpp"

namespace {

using admpff::cli::OptionSpec;
using admpff::cli::Parsed;
using admpff::cli::UsageError;

constexpr const char* kProg = "admpff-native";
constexpr int kUsageError = 2;  // what the Python commands and argparse return for bad input

const OptionSpec kPrecision{"--inference-precision", "P", "OpenVINO inference precision: f32, bf16, f16 or auto "
                                                          "(the CPU's default: bf16 where it has AMX/AVX512-BF16)", "auto"};
const OptionSpec kThreads{"--threads", "N", "OpenVINO inference threads (0: the plugin's default)", "0"};
const OptionSpec kModel{"--model", "M", "model: .onnx/.xml (OpenVINO) or .engine/.plan with its .json sidecar "
                                        "(TensorRT)", "", true};

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

admpff::EmbedderOptions embedder_options(const Parsed& args) {
  admpff::EmbedderOptions options;
  try {
    options.inference_precision = admpff::parse_inference_precision(args.get("--inference-precision"));
  } catch (const admpff::InvalidInputError& exc) {
    throw UsageError(std::string("argument --inference-precision: ") + exc.what());
  }
  options.threads = args.get_int("--threads", 0);
  return options;
}

void check_output(const std::string& path, const std::string& flag) {
  const std::string problem = admpff::output_path_problem(path);
  if (!problem.empty()) throw UsageError("cannot write " + flag + " " + path + ": " + problem);
}

std::vector<cv::Mat> read_images(const std::vector<std::string>& paths) {
  if (paths.empty()) throw UsageError("give at least one IMAGE");
  std::vector<cv::Mat> images;
  images.reserve(paths.size());
  for (const auto& path : paths) {
    cv::Mat image;
    try {
      image = cv::imread(path, cv::IMREAD_COLOR);
    } catch (const cv::Exception&) {
      image = cv::Mat();
    }
    if (image.empty()) throw admpff::InvalidInputError("cannot read image " + path + " (missing, empty or not an image)");
    images.push_back(image);
  }
  return images;
}

int usage_or_help(const Parsed& args, const std::string& command, const std::string& positional,
                  const std::string& description, const std::vector<OptionSpec>& specs) {
  if (!args.help) return -1;
  std::cout << admpff::cli::usage_text(std::string(kProg) + " " + command, positional, description, specs);
  return 0;
}

// -- embed ------------------------------------------------------------------------------------------
int cmd_embed(const std::vector<std::string>& argv) {
  const std::vector<OptionSpec> specs = {
      kModel,
      {"--modality", "MOD", "visible or infrared (also ir, thermal, rgb): the camera the images come from", "", true},
      {"--out", "E.npy", "float32 [n, dim] embeddings, rows in the order of the images", "", true},
      kPrecision,
      kThreads,
      {"--dump-input", "X.npy", "also write the preprocessed float32 NCHW 0..255 batch (to compare preprocessing)", ""}};
  const Parsed args = admpff::cli::parse(argv, specs);
  if (const int rc = usage_or_help(args, "embed", "IMAGE...", "Embed person crops (images) into L2-normalised rows.",
                                   specs); rc >= 0)
    return rc;
  const std::string out = args.get("--out");
  check_output(out, "--out");
  if (args.has("--dump-input")) check_output(args.get("--dump-input"), "--dump-input");
  const admpff::EmbedderOptions options = embedder_options(args);
  const std::vector<cv::Mat> images = read_images(args.positional);
  admpff::Embedder embedder(args.get("--model"), options);
  const admpff::Matrix emb = embedder.embed(images, args.get("--modality"));
  if (args.has("--dump-input")) {
    std::vector<float> batch;
    admpff::crops_to_batch(images, embedder.contract(), batch);
    const admpff::InputContract& c = embedder.contract();
    admpff::write_npy(args.get("--dump-input"), batch.data(),
                      {images.size(), 3, static_cast<std::size_t>(c.height), static_cast<std::size_t>(c.width)});
  }
  admpff::write_npy(out, emb);
  std::cerr << kProg << ": " << embedder.describe() << ": wrote " << emb.rows << " x " << emb.cols << " to " << out
            << "\n";
  return 0;
}

// -- match ------------------------------------------------------------------------------------------
int cmd_match(const std::vector<std::string>& argv) {
  const std::vector<OptionSpec> specs = {
      kModel,
      {"--gallery", "G", "gallery .npz written by admpff-reid with the same model", "", true},
      {"--modality", "MOD", "visible or infrared: the camera the images come from", "visible"},
      {"--top-k", "K", "candidates listed per image", "5"},
      {"--threshold", "T", "cosine similarity to accept a match (below: unknown)", "0.6"},
      kPrecision,
      kThreads};
  const Parsed args = admpff::cli::parse(argv, specs);
  if (const int rc = usage_or_help(args, "match", "IMAGE...",
                                   "Best gallery matches per image, one line each: image, person (or unknown), score, "
                                   "then the top-k candidates as person=score.",
                                   specs); rc >= 0)
    return rc;
  const int top_k = args.get_int("--top-k", 1);
  const float threshold = static_cast<float>(args.get_double("--threshold"));
  const admpff::EmbedderOptions options = embedder_options(args);
  const std::vector<cv::Mat> images = read_images(args.positional);
  admpff::Embedder embedder(args.get("--model"), options);
  const admpff::Gallery gallery = admpff::Gallery::load_for(args.get("--gallery"), embedder);
  const admpff::Matrix emb = embedder.embed(images, args.get("--modality"));
  const admpff::Matcher matcher(gallery, threshold);
  const auto results = matcher.match(emb, top_k);
  std::cout << std::fixed << std::setprecision(4);
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    std::cout << args.positional[i] << "\t" << r.person << "\t" << r.score << "\t";
    for (std::size_t k = 0; k < r.candidates.size(); ++k)
      std::cout << (k ? "," : "") << r.candidates[k].first << "=" << r.candidates[k].second;
    std::cout << "\n";
  }
  return 0;
}

// -- bench ------------------------------------------------------------------------------------------
double percentile(std::vector<double> sorted, double p) {  // numpy's default: linear interpolation
  const double pos = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

std::vector<int> parse_batches(const std::string& text) {
  std::vector<int> batches;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    int b = 0;
    try {
      b = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || item.empty() || b < 1)
      throw UsageError("argument --batch: expected sizes >= 1 separated by commas, got '" + text + "'");
    batches.push_back(b);
  }
  if (batches.empty()) throw UsageError("argument --batch: give at least one batch size");
  return batches;
}

int cmd_bench(const std::vector<std::string>& argv) {
  const std::vector<OptionSpec> specs = {
      kModel,
      {"--batch", "B1,B2", "batch sizes", "1,8,32"},
      {"--warmup", "N", "untimed runs per batch", "10"},
      {"--iters", "N", "timed runs per batch", "50"},
      kThreads,
      kPrecision,
      {"--json", "F", "also write the figures as JSON", ""}};
  const Parsed args = admpff::cli::parse(argv, specs);
  if (const int rc = usage_or_help(args, "bench", "",
                                   "trtexec-style latency of one inference call per batch (preprocessed input, host "
                                   "to host): min, mean, median, p90, p95, p99 in ms, and images/s = batch / mean.",
                                   specs); rc >= 0)
    return rc;
  if (!args.positional.empty()) throw UsageError("unrecognized argument " + args.positional.front());
  const std::vector<int> batches = parse_batches(args.get("--batch"));
  const int warmup = args.get_int("--warmup", 0);
  const int iters = args.get_int("--iters", 1);
  if (args.has("--json")) check_output(args.get("--json"), "--json");
  admpff::EmbedderOptions options = embedder_options(args);
  options.max_batch = 0;
  admpff::Embedder embedder(args.get("--model"), options);
  const admpff::InputContract& c = embedder.contract();
  const std::size_t per_image = 3 * static_cast<std::size_t>(c.height) * static_cast<std::size_t>(c.width);
  std::mt19937 rng(0);
  std::uniform_int_distribution<int> pixel(0, 255);
  // Latency does not depend on pixel values; alternating modalities exercise both stems.
  const int visible = c.modality_code("visible"), infrared = c.modality_code("infrared");

  nlohmann::json rows = nlohmann::json::array();
  std::cout << embedder.describe() << "\n";
  std::cout << std::setw(6) << "batch" << std::setw(10) << "min" << std::setw(10) << "mean" << std::setw(10) << "median"
            << std::setw(10) << "p90" << std::setw(10) << "p95" << std::setw(10) << "p99" << std::setw(11) << "img/s"
            << "\n";
  for (const int batch : batches) {
    if (embedder.max_batch() > 0 && batch > embedder.max_batch())
      throw UsageError("batch " + std::to_string(batch) + " exceeds the model's maximum " +
                       std::to_string(embedder.max_batch()));
    std::vector<float> images(static_cast<std::size_t>(batch) * per_image);
    for (auto& v : images) v = static_cast<float>(pixel(rng));
    std::vector<int32_t> codes(static_cast<std::size_t>(batch));
    for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = i % 2 == 0 ? visible : infrared;
    for (int i = 0; i < warmup; ++i) embedder.embed_preprocessed(images, codes);
    std::vector<double> ms;
    ms.reserve(static_cast<std::size_t>(iters));
    for (int i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      embedder.embed_preprocessed(images, codes);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    const double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(ms.size());
    double var = 0.0;
    for (double v : ms) var += (v - mean) * (v - mean);
    const double stdev = std::sqrt(var / static_cast<double>(ms.size()));
    nlohmann::json row = {{"iters", iters},
                          {"batch", batch},
                          {"min_ms", sorted.front()},
                          {"mean_ms", mean},
                          {"median_ms", percentile(sorted, 50)},
                          {"p90_ms", percentile(sorted, 90)},
                          {"p95_ms", percentile(sorted, 95)},
                          {"p99_ms", percentile(sorted, 99)},
                          {"max_ms", sorted.back()},
                          {"std_ms", stdev},
                          {"cv", mean > 0 ? stdev / mean : 0.0},
                          {"total_s", mean * static_cast<double>(ms.size()) / 1000.0},
                          {"images_per_s", mean > 0 ? batch * 1000.0 / mean : 0.0},
                          {"queries_per_s", mean > 0 ? 1000.0 / mean : 0.0}};
    std::cout << std::fixed << std::setprecision(3) << std::setw(6) << batch << std::setw(10) << sorted.front()
              << std::setw(10) << mean << std::setw(10) << row["median_ms"].get<double>() << std::setw(10)
              << row["p90_ms"].get<double>() << std::setw(10) << row["p95_ms"].get<double>() << std::setw(10)
              << row["p99_ms"].get<double>() << std::setprecision(1) << std::setw(11)
              << row["images_per_s"].get<double>() << "\n";
    rows.push_back(row);
  }
  std::cout << "latency: ms per batch (one inference call, host to host, after warm-up); img/s = batch / mean\n";
  if (args.has("--json")) {
    const nlohmann::json doc = {{"model", args.get("--model")},
                                {"backend", embedder.describe()},
                                {"threads", options.threads},
                                {"inference_precision", admpff::to_string(options.inference_precision)},
                                {"warmup", warmup},
                                {"percentiles", "linear interpolation (numpy)"},
                                {"results", rows}};
    const std::string text = doc.dump(2) + "\n";
    admpff::write_file_atomic(args.get("--json"), text);
  }
  return 0;
}

const char* kUsage =
    "usage: admpff-native {embed,match,bench} ...\n\n"
    "  embed  --model M --modality visible|infrared --out E.npy IMAGE...   embed person crops\n"
    "  match  --model M --gallery G IMAGE... [--top-k K] [--threshold T]  best gallery matches per image\n"
    "  bench  --model M [--batch 1,8,32] [--warmup N] [--iters N]         latency and throughput\n\n"
    "`admpff-native COMMAND --help` lists each command's options.\n";

}  // namespace

int main(int argc, char** argv) {
  // Problems are reported once, as one line; OpenCV's own warnings (imread of a missing file) would add more.
  cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    (args.empty() ? std::cerr : std::cout) << kUsage;
    return args.empty() ? kUsageError : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  try {
    if (command == "embed") return cmd_embed(args);
    if (command == "match") return cmd_match(args);
    if (command == "bench") return cmd_bench(args);
    throw UsageError("unknown command '" + command + "'; choose embed, match or bench");
  } catch (const UsageError& exc) {
    std::cerr << kProg << " " << command << ": error: " << one_line(exc.what()) << "\n";
    return kUsageError;
  } catch (const admpff::InferenceError& exc) {
    std::cerr << kProg << " " << command << ": error: " << one_line(exc.what()) << "\n";
    return 1;
  } catch (const admpff::Error& exc) {  // bad input: a model, image, gallery or value the user can fix
    std::cerr << kProg << " " << command << ": error: " << one_line(exc.what()) << "\n";
    return kUsageError;
  } catch (const cv::Exception& exc) {
    std::cerr << kProg << " " << command << ": error: OpenCV: " << one_line(exc.err) << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << kProg << " " << command << ": error: out of memory\n";
    return 1;
  } catch (const std::exception& exc) {
    std::cerr << kProg << " " << command << ": error: " << one_line(exc.what()) << "\n";
    return 1;
  }
}
