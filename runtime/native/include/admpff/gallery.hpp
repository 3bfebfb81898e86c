// Galleries written by admpff-reid (runtime/gallery.py: an .npz with a JSON header, embeddings, owner and
// modality arrays), and cosine top-k matching (runtime/matching.py).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "admpff/embedder.hpp"

namespace admpff {

class Gallery {
 public:
  /// Read a gallery; ModelMismatchError when it was built with another model than `expected_model_hash`
  /// (or holds embeddings of another dimension), GalleryError when missing, corrupt or inconsistent.
  static Gallery load(const std::string& path, const std::optional<std::string>& expected_model_hash = std::nullopt,
                      const std::optional<int>& expected_dim = std::nullopt);
  /// Load checked against the embedder's model hash and embedding dimension.
  static Gallery load_for(const std::string& path, const Embedder& embedder);

  const std::vector<std::string>& persons() const { return persons_; }
  int embedding_dim() const { return embedding_dim_; }
  const std::string& model_hash() const { return model_hash_; }
  const std::string& precision() const { return precision_; }
  /// All rows, grouped by person; owner()[i] indexes persons().
  const Matrix& embeddings() const { return embeddings_; }
  const std::vector<int>& owner() const { return owner_; }
  const std::vector<int>& modality() const { return modality_; }

 private:
  std::vector<std::string> persons_;
  int embedding_dim_ = 0;
  std::string model_hash_;
  std::string precision_;
  Matrix embeddings_;
  std::vector<int> owner_;
  std::vector<int> modality_;
};

/// Best gallery match of one query; person is "unknown" when score < threshold.
struct MatchResult {
  std::string person;
  float score = 0.0f;
  std::vector<std::pair<std::string, float>> candidates;  ///< top-k (person, score), best first
  bool known() const { return person != "unknown"; }
};

/// A person's score is the maximum cosine over that person's rows.
class Matcher {
 public:
  explicit Matcher(const Gallery& gallery, float threshold = 0.6f);
  std::vector<MatchResult> match(const Matrix& queries, int top_k = 5) const;

 private:
  const Gallery& gallery_;
  float threshold_;
};

}  // namespace admpff
