// admpff native runtime: every failure is an admpff::Error (one clear, single-line message).
#pragma once

#include <stdexcept>
#include <string>

namespace admpff {

/// Base of every exception the library throws; what() is one line meant for the user.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A model file that cannot be used: missing, corrupt, no admpff contract, wrong inputs or outputs.
class ModelLoadError : public Error {
 public:
  using Error::Error;
};

/// The engine's JSON sidecar is missing, unreadable or from an incompatible admpff.
class SidecarError : public ModelLoadError {
 public:
  using ModelLoadError::ModelLoadError;
};

/// The engine was built for another TensorRT version, GPU or ONNX file (the message has the rebuild command).
class EngineMismatchError : public ModelLoadError {
 public:
  using ModelLoadError::ModelLoadError;
};

/// A gallery file that cannot be used: missing, corrupt or truncated, inconsistent.
class GalleryError : public Error {
 public:
  using Error::Error;
};

/// The gallery was built with another model than the one loaded.
class ModelMismatchError : public GalleryError {
 public:
  using GalleryError::GalleryError;
};

/// Bad arguments to a library call: unknown modality, crops and modalities of different lengths, a crop
/// that is not an image.
class InvalidInputError : public Error {
 public:
  using Error::Error;
};

/// A backend failed while running (out of memory, a driver error).
class InferenceError : public Error {
 public:
  using Error::Error;
};

}  // namespace admpff
