// An exported camdeploy graph on ONNX Runtime: the session, its metadata, and one call that runs a
// prepared batch and returns classes, scores and one box per class (from the graph's boxes output,
// or by the host rule where the graph has none or does not vouch for its box).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model_spec.hpp"

namespace camdeploy {

struct BatchResult {
  int count = 0;                 ///< N images
  int topk = 0;                  ///< T classes per image
  std::vector<std::int64_t> classes;  ///< [N, T], best first
  std::vector<float> scores;     ///< [N, T] softmax probabilities
  std::vector<float> boxes;      ///< [N, T, 4] x0, y0, x1, y1 in input-tensor pixels
  int host_boxed = 0;            ///< how many of the N x T maps were boxed by the host rule
};

class CamModel {
 public:
  /// Load MODEL.onnx with `threads` intra-op threads. Throws HostError with one clear line for a
  /// missing file, a file ONNX Runtime cannot load, or one without camdeploy metadata and outputs.
  CamModel(const std::string& path, int threads);
  ~CamModel();
  CamModel(const CamModel&) = delete;
  CamModel& operator=(const CamModel&) = delete;

  const ModelSpec& spec() const;
  /// True when the graph computes boxes (outputs boxes and boxes_exact, `--boxes graph/auto`).
  bool has_graph_boxes() const;
  /// Run `count` prepared images (float [count, 3, S_h, S_w], filled by prepare()).
  BatchResult infer(float* images, int count);

 private:
  struct Session;
  std::unique_ptr<Session> session_;
};

/// "ONNX Runtime 1.32.0 (C API 21)": the library loaded and the API version compiled against.
std::string onnxruntime_description();

}  // namespace camdeploy
