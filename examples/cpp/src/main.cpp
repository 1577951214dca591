// camdeploy-host: run an exported camdeploy model (CAM and boxes in the graph) on image files with
// ONNX Runtime and OpenCV, and print one results.jsonl object per image on stdout, as
// `camdeploy run` writes them.
//
//   camdeploy-host MODEL.onnx IMAGE_OR_DIR... [--batch-size N] [--threads N] > results.jsonl
//
// Exit status: 0 when at least one image was processed (unreadable ones are reported on stderr
// and skipped), 1 for a model it cannot use or when no image could be read, 2 for a bad command line.

#include <sched.h>

#include <charconv>
#include <cstdio>
#include <iostream>
#include <string>
#include <system_error>
#include <vector>

#include <opencv2/core.hpp>

#include "cam_model.hpp"
#include "errors.hpp"
#include "images.hpp"
#include "json.hpp"

namespace {

using camdeploy::BatchResult;
using camdeploy::Frame;
using camdeploy::HostError;
using camdeploy::UsageError;

const char* const kUsage = "usage: camdeploy-host MODEL.onnx IMAGE_OR_DIR... [--batch-size N] [--threads N]";
constexpr int kMaxBatch = 512;  // as camdeploy run
constexpr int kMaxThreads = 1024;

const char* const kHelp =
    "usage: camdeploy-host MODEL.onnx IMAGE_OR_DIR... [--batch-size N] [--threads N]\n"
    "\n"
    "Run a model written by `camdeploy export` on images with ONNX Runtime and print one JSON object\n"
    "per image on stdout, as in camdeploy run's results.jsonl: file, classes, labels, scores and boxes\n"
    "([x0, y0, x1, y1] per class in original pixels, pixel-edge coordinates). Preprocessing, T and the\n"
    "box threshold come from the model's metadata. Folders are searched recursively for .jpg, .jpeg,\n"
    ".png, .bmp, .webp, .tif, .tiff, .ppm and .pgm files. Unreadable files are reported on stderr and\n"
    "skipped.\n"
    "\n"
    "options:\n"
    "  --batch-size N  images per inference (default 8, at most 512)\n"
    "  --threads N     ONNX Runtime intra-op threads (default: the CPUs this process may use)\n"
    "  --version       print the versions of this program's ONNX Runtime and OpenCV\n"
    "  -h, --help      show this help\n";

struct Arguments {
  std::string model;
  std::vector<std::string> inputs;
  int batch_size = 8;
  int threads = 0;  // 0: the CPUs this process may use
};

int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return 1;
}

int parse_count(const std::string& option, const std::string& text, int maximum) {
  int value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || value < 1 || value > maximum) {
    throw UsageError(option + " '" + text + "': expected an integer from 1 to " + std::to_string(maximum));
  }
  return value;
}

// Returns false when the program should stop with status 0 (help or version printed).
bool parse_arguments(int argc, char** argv, Arguments& args) {
  std::vector<std::string> positional;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (options_done || arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
    } else if (arg == "-h" || arg == "--help") {
      std::cout << kHelp;
      return false;
    } else if (arg == "--version") {
      std::cout << "camdeploy-host: " << camdeploy::onnxruntime_description() << ", OpenCV " << CV_VERSION << "\n";
      return false;
    } else {
      const std::size_t equals = arg.find('=');
      const std::string name = arg.substr(0, equals);
      if (name != "--batch-size" && name != "--threads") {
        throw UsageError("unknown option '" + arg + "'; " + kUsage);
      }
      const int maximum = name == "--batch-size" ? kMaxBatch : kMaxThreads;
      std::string value;
      if (equals != std::string::npos) {
        value = arg.substr(equals + 1);
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        throw UsageError(name + ": expected a value, an integer from 1 to " + std::to_string(maximum));
      }
      (name == "--batch-size" ? args.batch_size : args.threads) = parse_count(name, value, maximum);
    }
  }
  if (positional.size() < 2) {
    throw UsageError("expected MODEL.onnx and at least one IMAGE_OR_DIR, got " +
                     std::to_string(positional.size()) + " arguments; " + kUsage);
  }
  args.model = positional[0];
  args.inputs.assign(positional.begin() + 1, positional.end());
  return true;
}

// One results.jsonl line, as camdeploy.runtime.pipeline.result_record and json.dumps write it:
// scores rounded to 6 decimals, boxes (original pixels) to 2.
std::string result_record(const std::string& file, const BatchResult& result, int index, const Frame& frame,
                          const std::vector<std::string>& class_names) {
  using camdeploy::json::number;
  using camdeploy::json::quote;
  using camdeploy::json::round_to;
  const std::size_t first = static_cast<std::size_t>(index) * static_cast<std::size_t>(result.topk);
  const std::size_t topk = static_cast<std::size_t>(result.topk);
  std::string classes;
  std::string labels;
  std::string scores;
  std::string boxes;
  for (std::size_t t = 0; t < topk; ++t) {
    const char* separator = t == 0 ? "" : ", ";
    const std::int64_t label = result.classes[first + t];
    classes += separator + std::to_string(label);
    labels += separator + quote(class_names[static_cast<std::size_t>(label)]);
    scores += separator + number(round_to(result.scores[first + t], 6));
    const auto box = frame.to_original(&result.boxes[4 * (first + t)]);
    boxes += std::string(separator) + "[" + number(round_to(box[0], 2)) + ", " + number(round_to(box[1], 2)) +
             ", " + number(round_to(box[2], 2)) + ", " + number(round_to(box[3], 2)) + "]";
  }
  return "{\"file\": " + quote(file) + ", \"classes\": [" + classes + "], \"labels\": [" + labels +
         "], \"scores\": [" + scores + "], \"boxes\": [" + boxes + "]}\n";
}

void write_stdout(const std::string& text) {
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0) {
    throw HostError("cannot write the results to stdout");
  }
}

std::string one_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

int run(int argc, char** argv) {
  Arguments args;
  if (!parse_arguments(argc, argv, args)) return 0;
  const std::vector<std::string> files = camdeploy::list_images(args.inputs);
  camdeploy::CamModel model(args.model, args.threads > 0 ? args.threads : usable_cpus());
  const camdeploy::ModelSpec& spec = model.spec();

  const std::size_t image_size =
      3u * static_cast<std::size_t>(spec.input_height) * static_cast<std::size_t>(spec.input_width);
  std::vector<float> batch(static_cast<std::size_t>(args.batch_size) * image_size);
  std::vector<std::string> names;
  std::vector<Frame> frames;
  std::size_t done = 0;
  const auto flush = [&]() {
    if (names.empty()) return;
    const BatchResult result = model.infer(batch.data(), static_cast<int>(names.size()));
    std::string lines;
    for (std::size_t i = 0; i < names.size(); ++i) {
      lines += result_record(names[i], result, static_cast<int>(i), frames[i], spec.class_names);
    }
    write_stdout(lines);
    done += names.size();
    names.clear();
    frames.clear();
  };
  for (const std::string& file : files) {
    cv::Mat image;
    try {
      image = camdeploy::load_image(file);
    } catch (const camdeploy::ImageError& error) {
      std::cerr << "camdeploy-host: warning: skipped " << one_line(error.what()) << std::endl;
      continue;
    }
    frames.push_back(camdeploy::prepare(image, spec, batch.data() + names.size() * image_size));
    names.push_back(file);
    if (names.size() == static_cast<std::size_t>(args.batch_size)) flush();
  }
  flush();
  if (done == 0) throw HostError("none of the " + std::to_string(files.size()) + " images could be read");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& error) {
    std::cerr << "camdeploy-host: error: " << one_line(error.what()) << std::endl;
    return 2;
  } catch (const std::exception& error) {  // HostError, and OpenCV's or the library's own
    std::cerr << "camdeploy-host: error: " << one_line(error.what()) << std::endl;
    return 1;
  }
}
