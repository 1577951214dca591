// The little JSON the host needs: reading the lists in the model's metadata (class names, pixel
// scale and offset) and writing results.jsonl the way Python's json.dumps does, so that the two
// hosts' lines can be compared byte for byte.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace camdeploy::json {

/// A JSON string literal for UTF-8 text, escaped as Python's json.dumps(ensure_ascii=True) does:
/// quotes, backslashes and control characters escaped, every non-ASCII code point written as
/// \uXXXX (a surrogate pair above U+FFFF). A byte that is not valid UTF-8 is written as \udcXX,
/// the code point Python gives it when it reads a file name (surrogateescape).
std::string quote(std::string_view utf8);

/// A finite double as Python's repr() writes it (shortest round-trip digits; "0.5", "3.0",
/// "1e-05", "1.5e+16"); NaN and infinities, which JSON cannot express, become null.
std::string number(double value);

/// Python's round(value, decimals): the double nearest to the correctly rounded decimal
/// (ties to even on the exact binary value).
double round_to(double value, int decimals);

/// Parse a JSON array of strings (UTF-8 out). Throws std::invalid_argument saying what is wrong.
std::vector<std::string> parse_string_array(std::string_view text);

/// Parse a JSON array of numbers. Throws std::invalid_argument saying what is wrong.
std::vector<double> parse_number_array(std::string_view text);

}  // namespace camdeploy::json
