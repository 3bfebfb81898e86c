// The input/output contract of an ADMPFF embedding model, read from the model file itself (the ONNX
// metadata_props key "admpff.contract", or an engine's JSON sidecar), exactly as runtime/contract.py reads it.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace admpff {

/// One part of the embedding: `name` occupies [offset, offset + size).
struct Stripe {
  std::string name;
  int offset = 0;
  int size = 0;
};

/// What a model expects and returns.  There are no defaults here on purpose: every field comes from the file.
struct InputContract {
  int height = 0;
  int width = 0;
  std::string channel_order;         ///< "RGB" or "BGR"
  std::string layout;                ///< "NCHW"
  std::string resize_interpolation;  ///< "linear", "area" or "cubic" (OpenCV's INTER_*)
  std::map<std::string, int> modality_codes;
  std::vector<Stripe> embedding;
  bool embedding_l2_normalized = true;
  std::string images_input;    ///< input_names[0]
  std::string modality_input;  ///< input_names[1]
  std::string output_name;

  int embedding_dim() const;
  /// "visible", "infrared" (also "ir", "thermal", "rgb"; any case) -> code; InvalidInputError otherwise.
  int modality_code(const std::string& modality) const;

  /// Parse the contract JSON (the value of "admpff.contract"); ModelLoadError naming `source` on bad input.
  static InputContract from_json(const std::string& text, const std::string& source = "model");
};

/// A model's contract plus provenance (the admpff.* metadata).
struct ModelInfo {
  InputContract contract;
  std::string precision;          ///< admpff.precision ("unknown" when absent)
  std::string checkpoint_sha256;  ///< admpff.checkpoint_sha256: what galleries are tied to
  std::string version;            ///< admpff.version
  bool tensorrt_compatible = true;
  std::map<std::string, std::string> raw;

  /// Mirrors ModelInfo.from_metadata: ModelLoadError when the contract is absent or unreadable.
  static ModelInfo from_metadata(const std::map<std::string, std::string>& metadata,
                                 const std::string& source = "model");
};

}  // namespace admpff
