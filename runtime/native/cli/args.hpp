// A small command-line parser for admpff-native: `--name value`, `--name=value`, flags and positionals.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "admpff/error.hpp"

namespace admpff::cli {

/// Bad usage: reported as one line, exit status 2 (as argparse and the Python commands do).
class UsageError : public Error {
 public:
  using Error::Error;
};

struct OptionSpec {
  std::string name;      ///< "--model"
  std::string metavar;   ///< "M"; empty for a flag without value
  std::string help;
  std::string fallback;  ///< default value shown in --help; empty: none
  bool required = false;
};

struct Parsed {
  std::map<std::string, std::string> values;
  std::set<std::string> flags;
  std::vector<std::string> positional;
  bool help = false;

  bool has(const std::string& name) const { return values.count(name) > 0; }
  std::string get(const std::string& name) const;
  int get_int(const std::string& name, int min_value) const;
  double get_double(const std::string& name) const;
};

Parsed parse(const std::vector<std::string>& argv, const std::vector<OptionSpec>& specs);
std::string usage_text(const std::string& prog, const std::string& positional, const std::string& description,
                       const std::vector<OptionSpec>& specs);

}  // namespace admpff::cli
