/* The host box rule in C: on CAMs (camdeploy/runtime/boxes.py) and from low-resolution maps
 * (camdeploy/runtime/map_boxes.py), what those modules do with OpenCV and NumPy, in one call per
 * batch of maps, with no Python between maps.
 *
 * Plain C99, no dependency: the Python extension (module.c) wraps it, and a C or C++ host can
 * compile it as it is. */
#ifndef CAMDEPLOY_BOXES_H
#define CAMDEPLOY_BOXES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Box maps[count][h][w] (float32, C order), each upsampled to out_h x out_w by half-pixel bilinear
 * interpolation, under threshold tau; margin_per_unit is the decision margin of a map of amplitude
 * 1 (camdeploy.runtime.map_boxes.decision_margin). For map m, decided[m] is 1 and boxes[4m..4m+3]
 * hold x0, y0, x1, y1 (pixel edges) when the host can decide the graph's box; else decided[m] is
 * 0 and the box is 0, 0, 0, 0. Returns 0, or -1 when memory runs out (nothing is then decided). */
int cd_map_boxes(const float *maps, size_t count, int h, int w, int out_h, int out_w, double tau,
                 double margin_per_unit, float *boxes, uint8_t *decided);

/* The host rule on CAMs [count][height][width] (float32, min-max normalised): for each, x0, y0, x1,
 * y1 of the largest 8-connected component of cam >= tau * max(cam) (the product in float32; ties:
 * the first pixel in raster order); the whole frame for a map with NaN or infinity or no pixel
 * above the level. Returns 0, or -1 when memory runs out. */
int cd_cam_boxes(const float *cams, size_t count, int height, int width, float tau, float *boxes);

/* The float32 half-pixel bilinear upsampling cd_map_boxes uses, of one map [h][w] into
 * out[out_h][out_w] (to measure its error against the exact one). Returns 0, or -1 without memory. */
int cd_upsample(const float *map, int h, int w, int out_h, int out_w, float *out);

#ifdef __cplusplus
}
#endif

#endif
