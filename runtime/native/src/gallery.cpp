#include "admpff/gallery.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <sys/stat.h>
#include <zip.h>

#include <nlohmann/json.hpp>

#include "admpff/error.hpp"
#include "admpff/npy.hpp"

namespace admpff {

namespace {

// What gallery.py tells a user whose gallery was refused.
const char* kRebuildHint =
    "rebuild it by enrolling the person folders again with the current model "
    "(admpff-reid --model MODEL --gallery NEW.npz --enroll PEOPLE_DIR)";
constexpr int kFormatVersion = 1;

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string short_hash(const std::string& h) { return (h.empty() ? std::string("unknown") : h).substr(0, 12); }

struct ZipArchive {
  zip_t* archive = nullptr;
  ~ZipArchive() {
    if (archive) zip_discard(archive);
  }
};

// One member ("header.npy" ...) of the .npz, read completely (libzip verifies the CRC at the end).
std::string read_member(zip_t* archive, const std::string& name, const std::string& path, const std::string& recover,
                        const std::string& key) {
  const zip_int64_t index = zip_name_locate(archive, name.c_str(), 0);
  if (index < 0)
    throw GalleryError("gallery file " + path + " lacks '" + key + "' (not an admpff gallery?)" + recover);
  zip_stat_t st;
  zip_stat_init(&st);
  if (zip_stat_index(archive, static_cast<zip_uint64_t>(index), 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
    throw GalleryError("gallery file " + path + " is corrupt or truncated (cannot stat " + name + ")" + recover);
  zip_file_t* file = zip_fopen_index(archive, static_cast<zip_uint64_t>(index), 0);
  if (!file)
    throw GalleryError("gallery file " + path + " is corrupt or truncated (" + zip_strerror(archive) + ")" + recover);
  std::string bytes(static_cast<std::size_t>(st.size), '\0');
  zip_int64_t got = 0;
  while (static_cast<zip_uint64_t>(got) < st.size) {
    const zip_int64_t n = zip_fread(file, bytes.data() + got, st.size - static_cast<zip_uint64_t>(got));
    if (n <= 0) break;
    got += n;
  }
  char probe;
  const zip_int64_t tail = zip_fread(file, &probe, 1);  // reading to the end makes libzip check the CRC
  std::string problem;
  if (static_cast<zip_uint64_t>(got) != st.size || tail < 0) problem = zip_error_strerror(zip_file_get_error(file));
  zip_fclose(file);
  if (!problem.empty())
    throw GalleryError("gallery file " + path + " is corrupt or truncated (" + name + ": " + problem + ")" + recover);
  return bytes;
}

}  // namespace

Gallery Gallery::load(const std::string& path, const std::optional<std::string>& expected_model_hash,
                      const std::optional<int>& expected_dim) {
  if (!is_file(path)) throw GalleryError("gallery file not found: " + path);
  const std::string bak = path + ".bak";
  const std::string recover = is_file(bak) ? "; the previous version is at " + bak : "";

  ZipArchive zip;
  int error_code = 0;
  zip.archive = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &error_code);
  if (!zip.archive) {
    zip_error_t error;
    zip_error_init_with_code(&error, error_code);
    const std::string reason = zip_error_strerror(&error);
    zip_error_fini(&error);
    throw GalleryError("gallery file " + path + " is corrupt or truncated (" + reason + ")" + recover);
  }
  NpyArray arrays[4];
  const char* keys[4] = {"header", "embeddings", "owner", "modality"};
  for (int i = 0; i < 4; ++i) {
    const std::string bytes = read_member(zip.archive, std::string(keys[i]) + ".npy", path, recover, keys[i]);
    try {
      arrays[i] = parse_npy(bytes, keys[i]);
    } catch (const InvalidInputError& exc) {
      throw GalleryError("gallery file " + path + " is corrupt or truncated (" + exc.what() + ")" + recover);
    }
  }
  const NpyArray& header_arr = arrays[0];
  nlohmann::json header;
  try {
    if (header_arr.descr != "|u1") throw std::runtime_error("header is not a byte array");
    header = nlohmann::json::parse(std::string(header_arr.data.begin(), header_arr.data.end()));
  } catch (const std::exception& exc) {
    throw GalleryError("gallery file " + path + " has an unreadable header (" + exc.what() + ")" + recover);
  }
  if (!header.is_object() || header.value("format", std::string()) != "admpff-gallery")
    throw GalleryError(path + " is not an admpff gallery file");
  const int format_version = header.contains("format_version") && header["format_version"].is_number_integer()
                                 ? header["format_version"].get<int>() : 0;
  if (format_version > kFormatVersion)
    throw GalleryError("gallery " + path + " has format version " + std::to_string(format_version) +
                       ", this admpff reads up to " + std::to_string(kFormatVersion) + ": upgrade admpff");

  const std::string built_with =
      header.contains("checkpoint_sha256") && header["checkpoint_sha256"].is_string() ? header["checkpoint_sha256"].get<std::string>() : "";
  if (expected_model_hash && built_with != *expected_model_hash) {
    const std::string version =
        header.contains("admpff_version") && header["admpff_version"].is_string() ? header["admpff_version"].get<std::string>() : "?";
    throw ModelMismatchError("gallery " + path + " was built with another model (checkpoint " + short_hash(built_with) +
                             ", admpff " + version + ") than the one loaded (checkpoint " +
                             short_hash(*expected_model_hash) +
                             "); embeddings of different models are not comparable: " + kRebuildHint);
  }

  const NpyArray &emb = arrays[1], &owner = arrays[2], &mods = arrays[3];
  Gallery g;
  bool consistent = emb.shape.size() == 2 && owner.shape.size() == 1 && mods.shape.size() == 1;
  std::vector<int64_t> counts;
  std::vector<std::string> names;
  std::optional<int> dim;
  try {
    names = header.value("persons", std::vector<std::string>{});
    counts = header.value("counts", std::vector<int64_t>{});
    if (header.contains("embedding_dim") && header["embedding_dim"].is_number_integer()) dim = header["embedding_dim"].get<int>();
  } catch (const nlohmann::json::exception&) {
    consistent = false;
  }
  std::vector<int64_t> owner_values, mod_values;
  std::vector<float> values;
  if (consistent) {
    const std::size_t rows = emb.shape[0];
    consistent = owner.shape[0] == rows && mods.shape[0] == rows && names.size() == counts.size() &&
                 std::accumulate(counts.begin(), counts.end(), int64_t{0}) == static_cast<int64_t>(rows);
    try {
      values = emb.as_float();
      owner_values = owner.as_int();
      mod_values = mods.as_int();
    } catch (const InvalidInputError&) {
      consistent = false;
    }
    if (consistent && rows > 0) {
      const auto [lo, hi] = std::minmax_element(owner_values.begin(), owner_values.end());
      consistent = dim && static_cast<std::size_t>(*dim) == emb.shape[1] && *lo >= 0 &&
                   *hi < static_cast<int64_t>(names.size());
    }
  }
  if (!consistent) throw GalleryError("gallery file " + path + " is inconsistent (header and arrays disagree)" + recover);
  if (expected_dim && dim && *dim != *expected_dim)
    throw ModelMismatchError("gallery " + path + " holds " + std::to_string(*dim) + "-d embeddings, the model emits " +
                             std::to_string(*expected_dim) + "-d: " + kRebuildHint);

  g.persons_ = names;
  g.embedding_dim_ = dim.value_or(static_cast<int>(emb.shape[1]));
  g.model_hash_ = built_with;
  g.precision_ = header.contains("precision") && header["precision"].is_string() ? header["precision"].get<std::string>() : "";
  // Rows grouped by person, in person order (what Gallery.matrix() gives after load).
  const std::size_t cols = emb.shape[1];
  g.embeddings_.cols = cols;
  std::vector<std::size_t> order(owner_values.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return owner_values[a] < owner_values[b]; });
  g.embeddings_.data.reserve(values.size());
  for (const std::size_t r : order) {
    g.embeddings_.data.insert(g.embeddings_.data.end(), values.begin() + static_cast<std::ptrdiff_t>(r * cols),
                              values.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols));
    g.owner_.push_back(static_cast<int>(owner_values[r]));
    g.modality_.push_back(static_cast<int>(mod_values[r]));
  }
  g.embeddings_.rows = g.owner_.size();
  return g;
}

Gallery Gallery::load_for(const std::string& path, const Embedder& embedder) {
  return load(path, embedder.info().checkpoint_sha256, embedder.dim());
}

Matcher::Matcher(const Gallery& gallery, float threshold) : gallery_(gallery), threshold_(threshold) {}

std::vector<MatchResult> Matcher::match(const Matrix& queries, int top_k) const {
  const auto& names = gallery_.persons();
  const Matrix& rows = gallery_.embeddings();
  std::vector<MatchResult> results;
  results.reserve(queries.rows);
  if (queries.rows && queries.cols != rows.cols && rows.rows)
    throw InvalidInputError("queries have dimension " + std::to_string(queries.cols) + ", the gallery holds " +
                            std::to_string(rows.cols));
  for (std::size_t q = 0; q < queries.rows; ++q) {
    MatchResult result;
    if (names.empty()) {
      result.person = "unknown";
      result.score = -std::numeric_limits<float>::infinity();
      results.push_back(result);
      continue;
    }
    const float* query = queries.row(q);
    double norm = 0.0;
    for (std::size_t j = 0; j < queries.cols; ++j) norm += static_cast<double>(query[j]) * query[j];
    const float scale = 1.0f / std::max(static_cast<float>(std::sqrt(norm)), 1e-12f);
    std::vector<float> person_score(names.size(), -std::numeric_limits<float>::infinity());
    for (std::size_t r = 0; r < rows.rows; ++r) {
      const float* row = rows.row(r);
      float dot = 0.0f;
      for (std::size_t j = 0; j < rows.cols; ++j) dot += query[j] * scale * row[j];
      auto& best = person_score[static_cast<std::size_t>(gallery_.owner()[r])];
      best = std::max(best, dot);
    }
    std::vector<std::size_t> order(names.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return person_score[a] > person_score[b]; });
    const std::size_t k = static_cast<std::size_t>(std::max(1, std::min(top_k, static_cast<int>(names.size()))));
    for (std::size_t i = 0; i < k; ++i)
      if (std::isfinite(person_score[order[i]])) result.candidates.emplace_back(names[order[i]], person_score[order[i]]);
    if (result.candidates.empty()) {
      result.person = "unknown";
      result.score = -std::numeric_limits<float>::infinity();
    } else {
      result.score = result.candidates.front().second;
      result.person = result.score >= threshold_ ? result.candidates.front().first : "unknown";
    }
    results.push_back(std::move(result));
  }
  return results;
}

}  // namespace admpff
