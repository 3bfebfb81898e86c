#include "args.hpp"

#include <sstream>

namespace admpff::cli {

std::string Parsed::get(const std::string& name) const {
  const auto it = values.find(name);
  return it == values.end() ? std::string() : it->second;
}

int Parsed::get_int(const std::string& name, int min_value) const {
  const std::string text = get(name);
  std::size_t used = 0;
  long v = 0;
  try {
    v = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || v < min_value || v > 1000000000L)
    throw UsageError("argument " + name + ": expected an integer >= " + std::to_string(min_value) + ", got '" + text + "'");
  return static_cast<int>(v);
}

double Parsed::get_double(const std::string& name) const {
  const std::string text = get(name);
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty()) throw UsageError("argument " + name + ": expected a number, got '" + text + "'");
  return v;
}

Parsed parse(const std::vector<std::string>& argv, const std::vector<OptionSpec>& specs) {
  Parsed p;
  auto find = [&](const std::string& name) -> const OptionSpec* {
    for (const auto& s : specs)
      if (s.name == name) return &s;
    return nullptr;
  };
  bool only_positional = false;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (only_positional || arg.size() < 2 || arg[0] != '-' || arg == "-") {
      p.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positional = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      p.help = true;
      continue;
    }
    std::string name = arg, value;
    bool inline_value = false;
    const auto eq = arg.find('=');
    if (eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      inline_value = true;
    }
    const OptionSpec* spec = find(name);
    if (!spec) throw UsageError("unrecognized argument " + name);
    if (spec->metavar.empty()) {
      if (inline_value) throw UsageError("argument " + name + " takes no value");
      p.flags.insert(name);
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= argv.size()) throw UsageError("argument " + name + ": expected a value " + spec->metavar);
      value = argv[++i];
    }
    p.values[name] = value;
  }
  if (p.help) return p;
  for (const auto& s : specs) {
    if (s.required && !p.has(s.name)) throw UsageError("the argument " + s.name + " is required");
    if (!s.metavar.empty() && !s.fallback.empty() && !p.has(s.name)) p.values[s.name] = s.fallback;
  }
  return p;
}

std::string usage_text(const std::string& prog, const std::string& positional, const std::string& description,
                       const std::vector<OptionSpec>& specs) {
  std::ostringstream out;
  out << "usage: " << prog;
  for (const auto& s : specs) {
    std::string item = s.name + (s.metavar.empty() ? "" : " " + s.metavar);
    out << " " << (s.required ? item : "[" + item + "]");
  }
  if (!positional.empty()) out << " " << positional;
  out << "\n\n" << description << "\n\noptions:\n";
  for (const auto& s : specs) {
    std::string item = "  " + s.name + (s.metavar.empty() ? "" : " " + s.metavar);
    if (item.size() < 30) item.append(30 - item.size(), ' ');
    else item += "\n" + std::string(30, ' ');
    out << item << s.help;
    if (!s.fallback.empty()) out << " (default: " << s.fallback << ")";
    out << "\n";
  }
  return out.str();
}

}  // namespace admpff::cli
