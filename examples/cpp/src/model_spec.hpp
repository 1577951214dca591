// What an exported camdeploy graph says about itself in its ONNX metadata_props (the contract of
// camdeploy/metadata.py): everything needed to prepare inputs and read outputs.
#pragma once

#include <array>
#include <map>
#include <string>
#include <vector>

namespace camdeploy {

struct ModelSpec {
  std::vector<std::string> class_names;  ///< K names, index = class index
  int input_height = 0;                  ///< S_h: images is [N, 3, S_h, S_w]
  int input_width = 0;                   ///< S_w
  std::array<float, 3> pixel_scale{};    ///< x = pixel * scale + offset, per channel in RGB order,
  std::array<float, 3> pixel_offset{};   ///< pixel in 0..255, computed in float32
  std::string resize;                    ///< "stretch" or "crop"
  int topk = 0;                          ///< T: classes (and maps) per image
  float box_threshold = 0.0f;            ///< tau, as float32: mask = cam >= tau * max(cam)
  std::string source_model;
  std::string camdeploy_version;

  /// Parse the camdeploy.* keys of metadata_props; `source` names the file in errors. Throws
  /// HostError naming the missing or malformed key.
  static ModelSpec from_props(const std::map<std::string, std::string>& props, const std::string& source);
};

}  // namespace camdeploy
