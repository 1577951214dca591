// Reading image files and preparing them for a camdeploy graph exactly as camdeploy run does
// (camdeploy/runtime/images.py), and mapping boxes back to the original image.
#pragma once

#include <array>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "model_spec.hpp"

namespace camdeploy {

/// File name suffixes (compared in lower case) that a folder is searched for.
extern const std::vector<std::string> kImageSuffixes;

/// How an input-tensor pixel maps to the original image: orig = tensor * scale + offset.
/// Boxes are in pixel-edge coordinates, so the map is affine and exact for stretch and crop.
struct Frame {
  int width = 0;   ///< original image width
  int height = 0;  ///< original image height
  double scale_x = 1.0;
  double scale_y = 1.0;
  double offset_x = 0.0;
  double offset_y = 0.0;

  /// A box x0, y0, x1, y1 in tensor pixels -> original pixels, clipped to the image; in float32
  /// as numpy computes it.
  std::array<float, 4> to_original(const float* box) const;
};

/// Decode encoded bytes to an 8-bit BGR image [H, W, 3] (OpenCV's channel order) the way
/// camdeploy run does: IMREAD_COLOR applies the EXIF orientation and turns grayscale into three
/// channels; 16-bit and float samples are scaled to 8 bits; a PNG, WebP or TIFF with alpha is
/// composited over white. Throws ImageError naming `source`.
cv::Mat decode_image(const std::vector<unsigned char>& data, const std::string& source);

/// Read and decode an image file; throws ImageError naming the file.
cv::Mat load_image(const std::string& path);

/// Resize to height x width (mode "stretch", or "crop": the centred region with the model's aspect
/// ratio, cut before resizing); INTER_AREA when shrinking, INTER_LINEAR otherwise.
cv::Mat resize_for_model(const cv::Mat& image, int height, int width, const std::string& mode, Frame& frame);

/// Resize `bgr` for the model and write it to `chw` (float [3, S_h, S_w], RGB planes) as
/// x = pixel * scale + offset in float32. Returns the frame back to the original image.
Frame prepare(const cv::Mat& bgr, const ModelSpec& spec, float* chw);

/// Expand files and folders (recursively, sorted as Python sorts paths) into image paths, written
/// as Python's pathlib writes them. Throws UsageError for a missing path or when nothing is found.
std::vector<std::string> list_images(const std::vector<std::string>& inputs);

}  // namespace camdeploy
