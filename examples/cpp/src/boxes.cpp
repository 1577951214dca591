#include "boxes.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

#include <opencv2/imgproc.hpp>

namespace camdeploy {

std::array<float, 4> cam_box(const float* cam, int height, int width, float tau) {
  const std::array<float, 4> whole = {0.0f, 0.0f, static_cast<float>(width), static_cast<float>(height)};
  const std::size_t count = static_cast<std::size_t>(height) * static_cast<std::size_t>(width);
  float peak = -INFINITY;
  for (std::size_t i = 0; i < count; ++i) {
    if (std::isnan(cam[i])) return whole;  // numpy's max is NaN then
    if (cam[i] > peak) peak = cam[i];
  }
  if (!std::isfinite(peak)) return whole;
  const float cut = tau * peak;  // float32, as the graph computes it
  cv::Mat mask(height, width, CV_8U);
  for (int y = 0; y < height; ++y) {
    auto* row = mask.ptr<std::uint8_t>(y);
    const float* values = cam + static_cast<std::size_t>(y) * static_cast<std::size_t>(width);
    for (int x = 0; x < width; ++x) row[x] = values[x] >= cut ? 1 : 0;
  }
  cv::Mat labels;
  cv::Mat stats;
  cv::Mat centroids;
  const int components = cv::connectedComponentsWithStats(mask, labels, stats, centroids, 8, CV_32S);
  if (components <= 1) return whole;  // no foreground: cannot happen for a finite map
  int largest = 0;
  int ties = 0;
  for (int label = 1; label < components; ++label) {
    const int area = stats.at<int>(label, cv::CC_STAT_AREA);
    if (area > largest) {
      largest = area;
      ties = 1;
    } else if (area == largest) {
      ++ties;
    }
  }
  int best = 0;
  if (ties == 1) {
    for (int label = 1; label < components && best == 0; ++label) {
      if (stats.at<int>(label, cv::CC_STAT_AREA) == largest) best = label;
    }
  } else {  // OpenCV's label order is not raster order: the first tied label met in a raster scan
    const int* flat = labels.ptr<int>();
    for (std::size_t i = 0; i < count && best == 0; ++i) {
      if (flat[i] > 0 && stats.at<int>(flat[i], cv::CC_STAT_AREA) == largest) best = flat[i];
    }
  }
  const int x = stats.at<int>(best, cv::CC_STAT_LEFT);
  const int y = stats.at<int>(best, cv::CC_STAT_TOP);
  return {static_cast<float>(x), static_cast<float>(y), static_cast<float>(x + stats.at<int>(best, cv::CC_STAT_WIDTH)),
          static_cast<float>(y + stats.at<int>(best, cv::CC_STAT_HEIGHT))};
}

}  // namespace camdeploy
