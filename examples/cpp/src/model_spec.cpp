#include "model_spec.hpp"

#include <charconv>
#include <cmath>
#include <stdexcept>
#include <system_error>

#include "errors.hpp"
#include "json.hpp"

namespace camdeploy {
namespace {

const std::string kPrefix = "camdeploy.";

class Props {
 public:
  Props(const std::map<std::string, std::string>& props, const std::string& source)
      : props_(props), source_(source) {}

  const std::string& get(const std::string& key) const {
    const auto found = props_.find(kPrefix + key);
    if (found == props_.end()) {
      throw HostError("MODEL " + source_ + ": metadata key '" + kPrefix + key +
                      "' is missing; expected a model written by `camdeploy export` (re-export it to add the "
                      "CAM metadata)");
    }
    return found->second;
  }

  [[noreturn]] void malformed(const std::string& key, const std::string& expected) const {
    throw HostError("MODEL " + source_ + ": metadata key '" + kPrefix + key + "' is '" + get(key) +
                    "'; expected " + expected);
  }

  int integer(const std::string& key, int minimum) const {
    const std::string& text = get(key);
    int value = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size() || value < minimum) {
      malformed(key, "an integer >= " + std::to_string(minimum));
    }
    return value;
  }

  std::array<float, 3> three_floats(const std::string& key) const {
    std::vector<double> values;
    try {
      values = json::parse_number_array(get(key));
    } catch (const std::invalid_argument&) {
      malformed(key, "a JSON list of 3 numbers");
    }
    if (values.size() != 3) malformed(key, "a JSON list of 3 numbers");
    // As numpy does: the JSON text is read as a double, then rounded to float32.
    return {static_cast<float>(values[0]), static_cast<float>(values[1]), static_cast<float>(values[2])};
  }

 private:
  const std::map<std::string, std::string>& props_;
  const std::string& source_;
};

}  // namespace

ModelSpec ModelSpec::from_props(const std::map<std::string, std::string>& props, const std::string& source) {
  const Props p(props, source);
  ModelSpec spec;
  try {
    spec.class_names = json::parse_string_array(p.get("class_names"));
  } catch (const std::invalid_argument& error) {
    p.malformed("class_names", std::string("a JSON list of strings (") + error.what() + ")");
  }
  if (spec.class_names.empty()) p.malformed("class_names", "a non-empty JSON list of strings");
  spec.input_height = p.integer("input_height", 1);
  spec.input_width = p.integer("input_width", 1);
  spec.pixel_scale = p.three_floats("pixel_scale");
  spec.pixel_offset = p.three_floats("pixel_offset");
  spec.resize = p.get("resize");
  if (spec.resize != "stretch" && spec.resize != "crop") p.malformed("resize", "stretch or crop");
  spec.topk = p.integer("topk", 1);
  const std::string& tau = p.get("box_threshold");
  double threshold = NAN;
  const auto [ptr, ec] = std::from_chars(tau.data(), tau.data() + tau.size(), threshold);
  if (ec != std::errc() || ptr != tau.data() + tau.size() || !(threshold >= 0.0 && threshold <= 1.0)) {
    p.malformed("box_threshold", "a number in [0, 1]");
  }
  spec.box_threshold = static_cast<float>(threshold);  // numpy: np.float32(float(text))
  if (p.get("color_order") != "RGB") p.malformed("color_order", "RGB (the only order this host supports)");
  if (p.get("layout") != "NCHW") p.malformed("layout", "NCHW (the only layout this host supports)");
  spec.source_model = p.get("source_model");
  spec.camdeploy_version = p.get("version");
  return spec;
}

}  // namespace camdeploy
