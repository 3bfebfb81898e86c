# FindTensorRT: NvInfer.h and libnvinfer, on x86-64 (tar/deb installs) and on Jetson (JetPack's aarch64 paths).
#
# Hints: TensorRT_ROOT (CMake variable or environment), a folder holding include/ and lib/.
# Results: TensorRT_FOUND, TensorRT_VERSION (from NvInferVersion.h), TensorRT_INCLUDE_DIR, TensorRT_LIBRARY,
#          imported target TensorRT::nvinfer.
set(_trt_hints ${TensorRT_ROOT} $ENV{TensorRT_ROOT} $ENV{TENSORRT_ROOT} /usr/local/tensorrt /opt/tensorrt)

find_path(TensorRT_INCLUDE_DIR NAMES NvInfer.h
  HINTS ${_trt_hints}
  PATH_SUFFIXES include include/x86_64-linux-gnu include/aarch64-linux-gnu
  PATHS /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu /usr/include)

find_library(TensorRT_LIBRARY NAMES nvinfer nvinfer_10 nvinfer_11
  HINTS ${_trt_hints}
  PATH_SUFFIXES lib lib64 lib/x64 lib/x86_64-linux-gnu lib/aarch64-linux-gnu
  PATHS /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib /usr/local/cuda/targets/aarch64-linux/lib)

set(TensorRT_VERSION "")
if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(READ "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_version_header)
  foreach(_part MAJOR MINOR PATCH)
    # TensorRT <= 10.3 writes the number on the NV_TENSORRT_* line; newer releases route it through TRT_*_ENTERPRISE.
    if(_trt_version_header MATCHES "#define[ \t]+NV_TENSORRT_${_part}[ \t]+([0-9]+)")
      set(_trt_${_part} ${CMAKE_MATCH_1})
    elseif(_trt_version_header MATCHES "#define[ \t]+TRT_${_part}_ENTERPRISE[ \t]+([0-9]+)")
      set(_trt_${_part} ${CMAKE_MATCH_1})
    else()
      set(_trt_${_part} 0)
    endif()
  endforeach()
  set(TensorRT_VERSION "${_trt_MAJOR}.${_trt_MINOR}.${_trt_PATCH}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
  REQUIRED_VARS TensorRT_LIBRARY TensorRT_INCLUDE_DIR
  VERSION_VAR TensorRT_VERSION)

if(TensorRT_FOUND AND NOT TARGET TensorRT::nvinfer)
  add_library(TensorRT::nvinfer UNKNOWN IMPORTED)
  set_target_properties(TensorRT::nvinfer PROPERTIES
    IMPORTED_LOCATION "${TensorRT_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
endif()
mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_LIBRARY)
