// Test helper for tests/test_native.py (not installed): runs library rules that need hardware absent in CI
// with the device facts given on the command line, so their wording can be compared with the Python runtime's.
//   admpff-native-probe check-sidecar ENGINE TENSORRT_VERSION GPU_NAME COMPUTE_CAPABILITY
// Prints "ok" or the error message on stdout; exit 0 when compatible, 1 when refused.
#include <iostream>
#include <string>

#include "admpff/engine_sidecar.hpp"
#include "admpff/error.hpp"

int main(int argc, char** argv) {
  if (argc != 6 || std::string(argv[1]) != "check-sidecar") {
    std::cerr << "usage: admpff-native-probe check-sidecar ENGINE TENSORRT_VERSION GPU_NAME COMPUTE_CAPABILITY\n";
    return 2;
  }
  try {
    const auto sidecar = admpff::read_sidecar(argv[2]);
    admpff::check_compatible(sidecar, argv[3], argv[4], argv[5], "", argv[2]);
    std::cout << "ok\n";
    return 0;
  } catch (const admpff::Error& exc) {
    std::cout << exc.what() << "\n";
    return 1;
  }
}
