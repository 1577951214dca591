#include "images.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>

#include <unistd.h>

#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "errors.hpp"

namespace camdeploy {

const std::vector<std::string> kImageSuffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp",
                                                 ".tif", ".tiff", ".ppm", ".pgm"};

namespace {

namespace fs = std::filesystem;

const char* numpy_dtype(int depth) {
  switch (depth) {
    case CV_8S: return "int8";
    case CV_16S: return "int16";
    case CV_32S: return "int32";
    case CV_16F: return "float16";
    default: return "unknown";
  }
}

// 16-bit samples -> 8 bits with 65535 -> 255; float samples in [0, 1] -> 0..255 (clipped).
cv::Mat to_uint8(const cv::Mat& image, const std::string& source) {
  const int depth = image.depth();
  if (depth == CV_8U) return image;
  cv::Mat out(image.rows, image.cols, CV_MAKETYPE(CV_8U, image.channels()));
  const std::size_t count = image.total() * static_cast<std::size_t>(image.channels());
  const cv::Mat in = image.isContinuous() ? image : image.clone();
  std::uint8_t* dst = out.ptr<std::uint8_t>();
  if (depth == CV_16U) {
    const std::uint16_t* src = in.ptr<std::uint16_t>();
    for (std::size_t i = 0; i < count; ++i) dst[i] = static_cast<std::uint8_t>((src[i] + 128u) / 257u);
  } else if (depth == CV_32F) {
    const float* src = in.ptr<float>();
    for (std::size_t i = 0; i < count; ++i) {
      const float v = std::isnan(src[i]) ? 0.0f : std::min(std::max(src[i], 0.0f), 1.0f);
      dst[i] = static_cast<std::uint8_t>(v * 255.0f + 0.5f);
    }
  } else if (depth == CV_64F) {
    const double* src = in.ptr<double>();
    for (std::size_t i = 0; i < count; ++i) {
      const double v = std::isnan(src[i]) ? 0.0 : std::min(std::max(src[i], 0.0), 1.0);
      dst[i] = static_cast<std::uint8_t>(v * 255.0 + 0.5);
    }
  } else {
    throw ImageError(source + ": pixel type " + numpy_dtype(depth) +
                     " is not supported; expected 8 or 16 bit");
  }
  return out;
}

// np.rot90(image, quarter_turns): counter-clockwise quarter turns.
cv::Mat rotate_ccw(const cv::Mat& image, int quarter_turns) {
  if (quarter_turns == 0) return image;
  cv::Mat out;
  const int codes[] = {0, cv::ROTATE_90_COUNTERCLOCKWISE, cv::ROTATE_180, cv::ROTATE_90_CLOCKWISE};
  cv::rotate(image, out, codes[quarter_turns]);
  return out;
}

// The alpha plane of `full` (BGRA as stored) turned like `oriented` (BGR after EXIF). OpenCV
// applies the EXIF orientation only when it drops the alpha channel, so find which of the eight
// orientations turns the stored colour planes into `oriented` and apply it to alpha. Empty when
// none does (the colour planes decoded differently: keep the colours, drop the alpha).
cv::Mat oriented_alpha(const cv::Mat& full, const cv::Mat& oriented, const std::string& source) {
  const cv::Mat stored = to_uint8(full, source);
  for (const bool flip : {false, true}) {
    cv::Mat planes = stored;
    if (flip) cv::flip(stored, planes, 1);
    for (int quarter_turns = 0; quarter_turns < 4; ++quarter_turns) {
      const cv::Mat turned = rotate_ccw(planes, quarter_turns);
      if (turned.size() != oriented.size()) continue;
      cv::Mat colour;
      cv::cvtColor(turned, colour, cv::COLOR_BGRA2BGR);
      if (cv::norm(colour, oriented, cv::NORM_INF) == 0.0) {
        cv::Mat alpha;
        cv::extractChannel(turned, alpha, 3);
        return alpha;
      }
    }
  }
  return {};
}

// image * a + 255 * (1 - a) with a = alpha / 255, in float32 as numpy computes it, + 0.5, truncated.
void composite_over_white(cv::Mat& bgr, const cv::Mat& alpha) {
  for (int y = 0; y < bgr.rows; ++y) {
    auto* row = bgr.ptr<std::uint8_t>(y);
    const auto* weights = alpha.ptr<std::uint8_t>(y);
    for (int x = 0; x < bgr.cols; ++x) {
      const float weight = static_cast<float>(weights[x]) / 255.0f;
      const float white = 255.0f * (1.0f - weight);
      for (int c = 0; c < 3; ++c) {
        std::uint8_t& value = row[3 * x + c];
        const float mixed = static_cast<float>(value) * weight + white;
        value = static_cast<std::uint8_t>(mixed + 0.5f);
      }
    }
  }
}

bool may_have_alpha(const std::vector<unsigned char>& data) {
  static const char* const signatures[] = {"\x89PNG", "RIFF", "II*\0", "MM\0*"};  // PNG, WebP, TIFF
  if (data.size() < 4) return false;
  for (const char* signature : signatures) {
    if (std::memcmp(data.data(), signature, 4) == 0) return true;
  }
  return false;
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// Decoder messages (lower case) that mean pixels were made up for missing or invalid data: the image is
// refused as corrupt. The same list as camdeploy.runtime.images.CORRUPTION; other messages are warnings.
const char* const kCorruption[] = {"premature end", "bad huffman", "instead of rst", "libpng error", "truncated"};

// Runs `decode` with file descriptor 2 captured in a temporary file: libjpeg and libpng print their
// warnings there, unprefixed. Returns the lines printed meanwhile.
template <typename Decode>
std::vector<std::string> with_decoder_messages(Decode decode) {
  static std::mutex lock;
  const std::lock_guard<std::mutex> guard(lock);
  std::fflush(stderr);
  std::FILE* capture = std::tmpfile();
  const int saved = capture != nullptr ? ::dup(2) : -1;
  if (saved < 0) {  // cannot capture: decode as it is
    if (capture != nullptr) std::fclose(capture);
    decode();
    return {};
  }
  ::dup2(::fileno(capture), 2);
  try {
    decode();
  } catch (...) {
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::fclose(capture);
    throw;
  }
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::vector<std::string> lines;
  std::rewind(capture);
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, capture) != nullptr) {
    std::string line(buffer);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  std::fclose(capture);
  return lines;
}

// imdecode with OpenCV's own log line about an undecodable file silenced (our error says it) and the
// decoder libraries' messages checked: missing or invalid data is refused as corrupt, as camdeploy run does;
// any other message is a warning with this program's prefix.
cv::Mat quiet_imdecode(const std::vector<unsigned char>& data, int flags, const std::string& source) {
  namespace logging = cv::utils::logging;
  const auto level = logging::setLogLevel(logging::LOG_LEVEL_SILENT);
  cv::Mat image;
  const std::vector<std::string> messages = with_decoder_messages([&]() {
    try {
      image = cv::imdecode(cv::Mat(1, static_cast<int>(data.size()), CV_8U, const_cast<unsigned char*>(data.data())),
                           flags);
    } catch (const cv::Exception&) {
      image.release();
    }
  });
  logging::setLogLevel(level);
  for (const std::string& message : messages) {
    const std::string low = lower(message);
    for (const char* word : kCorruption) {
      if (low.find(word) != std::string::npos) {
        throw ImageError(source + ": corrupt image data, left out (the decoder says: " + message + ")");
      }
    }
  }
  for (const std::string& message : messages) {
    std::cerr << "camdeploy-host: warning: " << source << ": the decoder says: " << message << " (the image is kept)"
              << std::endl;
  }
  return image;
}

// Python's str(pathlib.Path(text)): repeated slashes and "." parts dropped, no trailing slash.
std::string pathlib_string(const std::string& text) {
  std::string root;
  if (!text.empty() && text[0] == '/') {
    root = (text.size() > 1 && text[1] == '/' && (text.size() == 2 || text[2] != '/')) ? "//" : "/";
  }
  std::string out = root;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find('/', start), text.size());
    const std::string part = text.substr(start, end - start);
    if (!part.empty() && part != ".") {
      if (out.size() > root.size()) out += '/';
      out += part;
    }
    start = end + 1;
  }
  return out.empty() ? "." : out;
}

bool has_image_suffix(const fs::path& path) {
  const std::string suffix = lower(path.extension().string());
  return std::find(kImageSuffixes.begin(), kImageSuffixes.end(), suffix) != kImageSuffixes.end();
}

// Python compares paths part by part; std::filesystem::path does the same.
std::vector<std::string> images_under(const std::string& folder) {
  std::vector<fs::path> relative;
  std::error_code error;
  const auto options = fs::directory_options::skip_permission_denied;
  for (fs::recursive_directory_iterator it(folder, options, error), end; !error && it != end; it.increment(error)) {
    std::error_code ignored;
    if (it->is_regular_file(ignored) && has_image_suffix(it->path())) {
      relative.push_back(it->path().lexically_relative(folder));
    }
  }
  std::sort(relative.begin(), relative.end());
  std::vector<std::string> found;
  for (const fs::path& path : relative) {
    found.push_back(folder == "." ? path.string() : (folder == "/" ? "/" : folder + "/") + path.string());
  }
  return found;
}

}  // namespace

std::array<float, 4> Frame::to_original(const float* box) const {
  const float sx = static_cast<float>(scale_x);
  const float sy = static_cast<float>(scale_y);
  const float ox = static_cast<float>(offset_x);
  const float oy = static_cast<float>(offset_y);
  const auto clip = [](float v, int limit) { return std::min(std::max(v, 0.0f), static_cast<float>(limit)); };
  return {clip(box[0] * sx + ox, width), clip(box[1] * sy + oy, height), clip(box[2] * sx + ox, width),
          clip(box[3] * sy + oy, height)};
}

cv::Mat decode_image(const std::vector<unsigned char>& data, const std::string& source) {
  // IMREAD_ANYDEPTH keeps 16-bit samples so that we scale them ourselves.
  cv::Mat image =
      data.empty() ? cv::Mat() : quiet_imdecode(data, cv::IMREAD_COLOR | cv::IMREAD_ANYDEPTH, source);
  if (image.empty()) throw ImageError(source + ": not a readable image (corrupt, empty or unknown format)");
  image = to_uint8(image, source);
  if (may_have_alpha(data)) {
    const cv::Mat full = quiet_imdecode(data, cv::IMREAD_UNCHANGED, source);  // keeps alpha, ignores EXIF
    if (!full.empty() && full.channels() == 4) {
      const cv::Mat alpha = oriented_alpha(full, image, source);
      if (!alpha.empty()) {
        image = image.clone();  // never write into a shared buffer
        composite_over_white(image, alpha);
      }
    }
  }
  return image;
}

cv::Mat load_image(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) throw ImageError(path + ": cannot read the file (Is a directory)");
  std::ifstream file(path, std::ios::binary);
  if (!file) throw ImageError(path + ": cannot read the file (" + std::strerror(errno) + ")");
  std::vector<unsigned char> data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) throw ImageError(path + ": cannot read the file (" + std::strerror(errno) + ")");
  return decode_image(data, path);
}

cv::Mat resize_for_model(const cv::Mat& image, int height, int width, const std::string& mode, Frame& frame) {
  const int h0 = image.rows;
  const int w0 = image.cols;
  int left = 0;
  int top = 0;
  cv::Mat source = image;
  if (mode == "crop") {  // the centred region with the model's aspect ratio, cut before resizing
    const double ratio = std::max(static_cast<double>(width) / w0, static_cast<double>(height) / h0);
    // Python's round(): halves to even, as nearbyint does in the default rounding mode.
    const int crop_w = std::min(w0, std::max(1, static_cast<int>(std::nearbyint(width / ratio))));
    const int crop_h = std::min(h0, std::max(1, static_cast<int>(std::nearbyint(height / ratio))));
    left = (w0 - crop_w) / 2;
    top = (h0 - crop_h) / 2;
    source = image(cv::Rect(left, top, crop_w, crop_h));
  } else if (mode != "stretch") {
    throw HostError("resize mode '" + mode + "': expected stretch or crop");
  }
  const bool shrinking = width < source.cols || height < source.rows;
  cv::Mat resized;
  cv::resize(source, resized, cv::Size(width, height), 0.0, 0.0, shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
  frame = Frame{w0,
                h0,
                static_cast<double>(source.cols) / width,
                static_cast<double>(source.rows) / height,
                static_cast<double>(left),
                static_cast<double>(top)};
  return resized;
}

Frame prepare(const cv::Mat& bgr, const ModelSpec& spec, float* chw) {
  Frame frame;
  const cv::Mat resized = resize_for_model(bgr, spec.input_height, spec.input_width, spec.resize, frame);
  const std::size_t plane = static_cast<std::size_t>(spec.input_height) * static_cast<std::size_t>(spec.input_width);
  for (int y = 0; y < resized.rows; ++y) {
    const auto* row = resized.ptr<std::uint8_t>(y);
    const std::size_t base = static_cast<std::size_t>(y) * static_cast<std::size_t>(spec.input_width);
    for (int x = 0; x < resized.cols; ++x) {
      for (int c = 0; c < 3; ++c) {  // RGB planes from BGR pixels
        const float pixel = static_cast<float>(row[3 * x + (2 - c)]);
        chw[static_cast<std::size_t>(c) * plane + base + static_cast<std::size_t>(x)] =
            pixel * spec.pixel_scale[static_cast<std::size_t>(c)] + spec.pixel_offset[static_cast<std::size_t>(c)];
      }
    }
  }
  return frame;
}

std::vector<std::string> list_images(const std::vector<std::string>& inputs) {
  std::vector<std::string> found;
  for (const std::string& item : inputs) {
    std::error_code error;
    const std::string path = pathlib_string(item);
    if (fs::is_directory(path, error)) {
      const std::vector<std::string> images = images_under(path);
      found.insert(found.end(), images.begin(), images.end());
    } else if (fs::exists(path, error)) {
      found.push_back(path);
    } else {
      throw HostError("INPUT " + item + ": no such file or folder");  // exit 1, as camdeploy run
    }
  }
  if (found.empty()) {
    std::string joined;
    for (const std::string& item : inputs) joined += (joined.empty() ? "" : " ") + item;
    std::string suffixes;
    for (const std::string& suffix : kImageSuffixes) suffixes += (suffixes.empty() ? "" : ", ") + suffix;
    throw HostError("INPUT " + joined + ": no images found; expected files or folders holding " + suffixes +
                     " files");
  }
  return found;
}

}  // namespace camdeploy
