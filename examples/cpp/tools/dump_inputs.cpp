// camdeploy-host-inputs: a verification aid for camdeploy-host. For each image it writes what the
// host decodes (uint8 RGB [H, W, 3]) and the model input it prepares (float32 [3, S_h, S_w]) as
// .npy files, with the same code as the host, so that tests can compare them with camdeploy's
// Python preprocessing value by value.
//
//   camdeploy-host-inputs MODEL.onnx OUT_DIR IMAGE...
//
// Writes OUT_DIR/<k>.decoded.npy and OUT_DIR/<k>.input.npy for the k-th IMAGE (from 0) and prints
// "k<TAB>IMAGE" per image, or "k<TAB>IMAGE<TAB>error: <reason>" for one it cannot read.

#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <opencv2/imgproc.hpp>

#include "cam_model.hpp"
#include "errors.hpp"
#include "images.hpp"

namespace {

// NPY format version 1.0: magic, header length, a Python dict literal padded to 64 bytes, data.
void write_npy(const std::string& path, const char* descr, const std::vector<int>& shape, const void* data,
               std::size_t bytes) {
  std::string dims;
  for (const int d : shape) dims += std::to_string(d) + ", ";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const auto length = static_cast<std::uint16_t>(header.size());
  const char little_endian[2] = {static_cast<char>(length & 0xFF), static_cast<char>(length >> 8)};
  out.write(little_endian, 2);
  out << header;
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) throw camdeploy::HostError("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: camdeploy-host-inputs MODEL.onnx OUT_DIR IMAGE...\n";
    return 2;
  }
  try {
    camdeploy::CamModel model(argv[1], 1);
    const camdeploy::ModelSpec& spec = model.spec();
    const std::string out_dir = argv[2];
    std::vector<float> input(3u * static_cast<std::size_t>(spec.input_height) *
                             static_cast<std::size_t>(spec.input_width));
    for (int k = 0; k + 3 < argc; ++k) {
      const std::string file = argv[k + 3];
      cv::Mat bgr;
      try {
        bgr = camdeploy::load_image(file);
      } catch (const camdeploy::ImageError& error) {
        std::cout << k << '\t' << file << "\terror: " << error.what() << '\n';
        continue;
      }
      cv::Mat rgb;
      cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
      camdeploy::prepare(bgr, spec, input.data());
      const std::string stem = out_dir + "/" + std::to_string(k);
      write_npy(stem + ".decoded.npy", "|u1", {rgb.rows, rgb.cols, 3}, rgb.data, rgb.total() * 3);
      write_npy(stem + ".input.npy", "<f4", {3, spec.input_height, spec.input_width}, input.data(),
                input.size() * sizeof(float));
      std::cout << k << '\t' << file << '\n';
    }
  } catch (const std::exception& error) {
    std::cerr << "camdeploy-host-inputs: error: " << error.what() << '\n';
    return 1;
  }
  return 0;
}
