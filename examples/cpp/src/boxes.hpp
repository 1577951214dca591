// The CAM paper's box rule on the host, the same as camdeploy/runtime/boxes.py:
//   1. mask = cam >= tau * max(cam), the product taken in float32;
//   2. the 8-connected components of mask (cv::connectedComponentsWithStats);
//   3. the largest by pixel count; on a tie, the one whose first pixel comes first in raster order;
//   4. its bounding box x0, y0, x1, y1 in pixel-edge coordinates (pixel columns x0 .. x1 - 1).
// A constant map passes everywhere and gives the whole frame; so does a map with NaN or infinity.
#pragma once

#include <array>

namespace camdeploy {

/// Box of the largest 8-connected region of cam >= tau * max(cam), for a float map [height, width]
/// stored row by row.
std::array<float, 4> cam_box(const float* cam, int height, int width, float tau);

}  // namespace camdeploy
