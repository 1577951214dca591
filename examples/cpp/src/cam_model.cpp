#include "cam_model.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <map>

#include <onnxruntime_cxx_api.h>

#include "boxes.h"
#include "errors.hpp"

namespace camdeploy {
namespace {

// The program is compiled against headers for API version ORT_API_VERSION; the library it loads
// at run time must offer that version (it offers every version up to its own).
void init_onnxruntime() {
  static bool done = false;
  if (done) return;
  const OrtApiBase* base = OrtGetApiBase();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    throw HostError(std::string("ONNX Runtime ") + base->GetVersionString() + " does not offer C API version " +
                    std::to_string(ORT_API_VERSION) +
                    ", which this program was compiled for; rebuild it against this library (examples/cpp/build.sh)");
  }
  Ort::InitApi(api);
  done = true;
}

std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  std::replace(text.begin(), text.end(), '\r', ' ');
  return text;
}

const char* kInput = "images";
const std::array<const char*, 3> kOutputs = {"classes", "scores", "cams"};
const std::array<const char*, 2> kBoxOutputs = {"boxes", "boxes_exact"};

std::vector<std::int64_t> shape_of(const Ort::Value& value) {
  return value.GetTensorTypeAndShapeInfo().GetShape();
}

std::map<std::string, std::string> metadata_of(const Ort::Session& session) {
  std::map<std::string, std::string> props;
  Ort::AllocatorWithDefaultOptions allocator;
  const Ort::ModelMetadata metadata = session.GetModelMetadata();
  for (const auto& key : metadata.GetCustomMetadataMapKeysAllocated(allocator)) {
    props[key.get()] = metadata.LookupCustomMetadataMapAllocated(key.get(), allocator).get();
  }
  return props;
}

std::string lookup(const std::map<std::string, std::string>& props, const std::string& key) {
  const auto found = props.find(key);
  return found == props.end() ? std::string() : found->second;
}

// How an INT8 (Q/DQ) file runs, as `camdeploy run` runs it (camdeploy/runtime/int8.py): a graph
// calibrated for TensorRT as simulated int8 (float math on dequantized values, what TensorRT
// computes); one calibrated for the CPU with 8-bit weights through ONNX Runtime's exact U8U8
// kernels on an x86-64 CPU without AVX512-VNNI, whose U8S8 kernels saturate.
std::vector<std::pair<const char*, const char*>> int8_session_config(const std::map<std::string, std::string>& props) {
  if (lookup(props, "camdeploy.precision") != "int8") return {};
  if (lookup(props, "camdeploy.int8_target") != "cpu") return {{"session.disable_quant_qdq", "1"}};
  bool vnni = true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  vnni = __builtin_cpu_supports("avx512vnni");
#endif
  if (!vnni && lookup(props, "camdeploy.int8_weight_bits") != "7") return {{"session.x64quantprecision", "1"}};
  return {};
}

}  // namespace

struct CamModel::Session {
  std::string path;
  Ort::Env env{nullptr};
  Ort::Session session{nullptr};
  ModelSpec spec;
  bool graph_boxes = false;
  std::vector<const char*> output_names;
  Ort::MemoryInfo memory{nullptr};

  void check_tensor(bool input, const std::string& name, ONNXTensorElementDataType type, const char* type_name) {
    Ort::AllocatorWithDefaultOptions allocator;
    const std::size_t count = input ? session.GetInputCount() : session.GetOutputCount();
    for (std::size_t i = 0; i < count; ++i) {
      const auto found = input ? session.GetInputNameAllocated(i, allocator) : session.GetOutputNameAllocated(i, allocator);
      if (name != found.get()) continue;
      const Ort::TypeInfo info = input ? session.GetInputTypeInfo(i) : session.GetOutputTypeInfo(i);
      if (info.GetONNXType() != ONNX_TYPE_TENSOR || info.GetTensorTypeAndShapeInfo().GetElementType() != type) {
        throw HostError("MODEL " + path + ": " + (input ? "input '" : "output '") + name + "' is not a " + type_name +
                        " tensor; expected a graph written by `camdeploy export`");
      }
      if (input) {  // [N, 3, S_h, S_w]; -1 marks a dynamic dimension
        const auto dims = info.GetTensorTypeAndShapeInfo().GetShape();
        const std::array<std::int64_t, 3> expected = {3, spec.input_height, spec.input_width};
        bool fits = dims.size() == 4;
        for (std::size_t d = 1; fits && d < 4; ++d) fits = dims[d] < 0 || dims[d] == expected[d - 1];
        if (!fits) {
          throw HostError("MODEL " + path + ": input 'images' does not have the shape [N, 3, " +
                          std::to_string(spec.input_height) + ", " + std::to_string(spec.input_width) +
                          "] that its metadata gives");
        }
      }
      return;
    }
    throw HostError("MODEL " + path + ": " + (input ? "input '" : "output '") + name +
                    "' is missing; expected a graph written by `camdeploy export`");
  }

  bool has_output(const std::string& name) {
    Ort::AllocatorWithDefaultOptions allocator;
    for (std::size_t i = 0; i < session.GetOutputCount(); ++i) {
      if (name == session.GetOutputNameAllocated(i, allocator).get()) return true;
    }
    return false;
  }
};

CamModel::CamModel(const std::string& path, int threads) {
  init_onnxruntime();  // before any Ort object exists: even an empty one releases through the API
  session_ = std::make_unique<Session>();
  Session& s = *session_;
  s.path = path;
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    throw HostError("MODEL " + path + ": no such file; expected an .onnx file written by `camdeploy export`");
  }
  if (std::filesystem::is_directory(path, error)) {
    throw HostError("MODEL " + path + ": is a folder; expected an .onnx file written by `camdeploy export`");
  }
  // A device or a fifo would be read for ever (or block): refuse what is no regular file, and a file
  // larger than $CAMDEPLOY_MAX_MODEL_MB (default 2048: a self-contained ONNX file stays under 2 GiB),
  // as camdeploy.graph.check_model_file does.
  if (!std::filesystem::is_regular_file(path, error)) {
    throw HostError("MODEL " + path + ": not a regular file; expected an .onnx file written by `camdeploy export`");
  }
  const char* limit_text = std::getenv("CAMDEPLOY_MAX_MODEL_MB");
  const double limit_mb = (limit_text != nullptr && *limit_text != '\0') ? std::atof(limit_text) : 2048.0;
  const auto size = std::filesystem::file_size(path, error);
  if (!error && static_cast<double>(size) > limit_mb * 1048576.0) {
    throw HostError("MODEL " + path + ": " + std::to_string(size >> 20) + " MiB is more than the limit of " +
                    std::to_string(static_cast<long long>(limit_mb)) + " MiB; set $CAMDEPLOY_MAX_MODEL_MB to raise it");
  }
  std::map<std::string, std::string> props;
  try {
    s.env = Ort::Env(ORT_LOGGING_LEVEL_FATAL, "camdeploy-host");  // failures come back as exceptions
    auto open = [&](const std::vector<std::pair<const char*, const char*>>& config) {
      Ort::SessionOptions options;
      options.SetIntraOpNumThreads(threads);
      options.SetInterOpNumThreads(1);
      options.SetExecutionMode(ORT_SEQUENTIAL);
      options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      for (const auto& [key, value] : config) options.AddConfigEntry(key, value);
      s.session = Ort::Session(s.env, path.c_str(), options);
    };
    open({});
    props = metadata_of(s.session);
    const auto config = int8_session_config(props);
    if (!config.empty()) open(config);  // an INT8 file: open it again, run the way camdeploy runs it
  } catch (const Ort::Exception& exc) {
    throw HostError("MODEL " + path + ": not a model ONNX Runtime can load (" + one_line(exc.what()) + ")");
  }
  s.spec = ModelSpec::from_props(props, path);

  s.check_tensor(true, kInput, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32");
  s.check_tensor(false, "classes", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, "int64");
  s.check_tensor(false, "scores", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32");
  s.check_tensor(false, "cams", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32");
  s.output_names.assign(kOutputs.begin(), kOutputs.end());
  s.graph_boxes = s.has_output("boxes") || s.has_output("boxes_exact");
  if (s.graph_boxes) {  // both or neither
    s.check_tensor(false, "boxes", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32");
    s.check_tensor(false, "boxes_exact", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, "bool");
    s.output_names.insert(s.output_names.end(), kBoxOutputs.begin(), kBoxOutputs.end());
  }
  s.memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
}

CamModel::~CamModel() = default;

const ModelSpec& CamModel::spec() const { return session_->spec; }

bool CamModel::has_graph_boxes() const { return session_->graph_boxes; }

BatchResult CamModel::infer(float* images, int count) {
  Session& s = *session_;
  const ModelSpec& spec = s.spec;
  const std::array<std::int64_t, 4> shape = {count, 3, spec.input_height, spec.input_width};
  const std::size_t size = static_cast<std::size_t>(count) * 3u * static_cast<std::size_t>(spec.input_height) *
                           static_cast<std::size_t>(spec.input_width);
  std::vector<Ort::Value> outputs;
  try {
    const Ort::Value input = Ort::Value::CreateTensor<float>(s.memory, images, size, shape.data(), shape.size());
    outputs = s.session.Run(Ort::RunOptions{nullptr}, &kInput, &input, 1, s.output_names.data(), s.output_names.size());
  } catch (const Ort::Exception& exc) {
    throw HostError("MODEL " + s.path + ": ONNX Runtime failed on a batch of " + std::to_string(count) + " (" +
                    one_line(exc.what()) + ")");
  }

  BatchResult result;
  result.count = count;
  const auto classes_shape = shape_of(outputs[0]);
  const auto cams_shape = shape_of(outputs[2]);
  if (classes_shape.size() != 2 || classes_shape[0] != count || cams_shape.size() != 4 ||
      cams_shape[0] != count || cams_shape[1] != classes_shape[1] || cams_shape[2] != spec.input_height ||
      cams_shape[3] != spec.input_width || shape_of(outputs[1]) != classes_shape) {
    throw HostError("MODEL " + s.path + ": outputs classes, scores and cams do not have the shapes [N, T] and [N, T, " +
                    std::to_string(spec.input_height) + ", " + std::to_string(spec.input_width) + "]");
  }
  result.topk = static_cast<int>(classes_shape[1]);
  if (result.topk != spec.topk) {
    throw HostError("MODEL " + s.path + ": the graph returns " + std::to_string(result.topk) +
                    " classes per image, its metadata key 'camdeploy.topk' says " + std::to_string(spec.topk));
  }
  const std::size_t maps = static_cast<std::size_t>(count) * static_cast<std::size_t>(result.topk);
  const auto* classes = outputs[0].GetTensorData<std::int64_t>();
  const auto* scores = outputs[1].GetTensorData<float>();
  const auto* cams = outputs[2].GetTensorData<float>();
  result.classes.assign(classes, classes + maps);
  result.scores.assign(scores, scores + maps);
  for (const std::int64_t index : result.classes) {
    if (index < 0 || index >= static_cast<std::int64_t>(spec.class_names.size())) {
      throw HostError("MODEL " + s.path + ": class index " + std::to_string(index) + " is outside the " +
                      std::to_string(spec.class_names.size()) + " class names of its metadata");
    }
  }

  const float* graph_boxes = nullptr;
  const bool* exact = nullptr;
  if (s.graph_boxes) {
    const std::vector<std::int64_t> expected = {count, result.topk, 4};
    if (shape_of(outputs[3]) != expected || shape_of(outputs[4]) != classes_shape) {
      throw HostError("MODEL " + s.path + ": outputs boxes and boxes_exact do not have the shapes [N, T, 4] and [N, T]");
    }
    graph_boxes = outputs[3].GetTensorData<float>();
    exact = outputs[4].GetTensorData<bool>();
  }
  const std::size_t map_size = static_cast<std::size_t>(spec.input_height) * static_cast<std::size_t>(spec.input_width);
  result.boxes.resize(maps * 4);
  // The host rule (camdeploy/native/boxes.c, as camdeploy.runtime.boxes): every map without boxes
  // in the graph, else only the maps the graph cannot vouch for.
  const auto host_boxes = [&](std::size_t first, std::size_t n) {
    if (cd_cam_boxes(cams + first * map_size, n, spec.input_height, spec.input_width, spec.box_threshold,
                     &result.boxes[4 * first]) != 0) {
      throw HostError("out of memory boxing " + std::to_string(n) + " maps");
    }
    result.host_boxed += static_cast<int>(n);
  };
  if (graph_boxes == nullptr) {
    host_boxes(0, maps);
  } else {
    for (std::size_t m = 0; m < maps; ++m) {
      if (exact[m]) {
        std::copy(graph_boxes + 4 * m, graph_boxes + 4 * m + 4, &result.boxes[4 * m]);
      } else {
        host_boxes(m, 1);
      }
    }
  }
  return result;
}

std::string onnxruntime_description() {
  return std::string("ONNX Runtime ") + OrtGetApiBase()->GetVersionString() + " (C API " +
         std::to_string(ORT_API_VERSION) + ")";
}

}  // namespace camdeploy
