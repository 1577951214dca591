// The two kinds of failure the host reports in one line: a bad command line (exit status 2) and
// anything else the user can fix (a missing or foreign model, an unwritable output; exit status 1).
#pragma once

#include <stdexcept>
#include <string>

namespace camdeploy {

/// A problem the user can fix; the message names the argument, the value and what was expected.
class HostError : public std::runtime_error {
 public:
  explicit HostError(const std::string& message) : std::runtime_error(message) {}
};

/// A bad command line (exit status 2).
class UsageError : public HostError {
 public:
  explicit UsageError(const std::string& message) : HostError(message) {}
};

/// An image that cannot be read or decoded: reported on stderr and skipped.
class ImageError : public HostError {
 public:
  explicit ImageError(const std::string& message) : HostError(message) {}
};

}  // namespace camdeploy
