// File helpers.  Writes are atomic (the native twin of runtime/atomic.py): a temporary file in the target's
// folder, fsync, rename onto the target, fsync the folder, so a crash never leaves a half-written file.
#pragma once

#include <string>

namespace admpff {

void write_file_atomic(const std::string& path, const std::string& bytes);
/// Empty string when `path` can be written (its folder exists and is writable), else the reason.
std::string output_path_problem(const std::string& path);
/// The whole file as bytes; Error when unreadable.
std::string read_file(const std::string& path);

}  // namespace admpff
