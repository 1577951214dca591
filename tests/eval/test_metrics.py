"""Metric functions against hand-computed cases."""

import numpy as np
import pytest

from camdeploy.eval.metrics import (
    MaxBoxAcc,
    best_iou,
    classification_errors,
    contour_boxes,
    edge_to_inclusive,
    iou_matrix,
    localization_errors,
    localization_hits,
)


def test_iou_uses_inclusive_corners():
    # [0, 0, 9, 9] is 10x10 = 100 pixels; [5, 0, 14, 9] overlaps it on 5x10 = 50.
    assert iou_matrix(np.array([[0, 0, 9, 9]]), np.array([[5, 0, 14, 9]]))[0, 0] == pytest.approx(50 / 150)
    assert iou_matrix(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))[0, 0] == 1.0  # one pixel
    assert iou_matrix(np.array([[0, 0, 4, 4]]), np.array([[5, 5, 9, 9]]))[0, 0] == 0.0


def test_iou_exactly_one_half_counts_as_a_hit():
    # 10x10 box against a 10x20 box containing it: IoU = 100 / 200 = 0.5 exactly.
    truth = np.array([[0, 0, 9, 19]])
    box = np.array([[0, 0, 9, 9]])
    assert best_iou(box, truth)[0] == 0.5
    assert localization_hits(np.array([3]), box, 3, truth).tolist() == [True]
    # One pixel row less: 90 / 200 < 0.5.
    assert localization_hits(np.array([3]), np.array([[0, 0, 9, 8]]), 3, truth).tolist() == [False]


def test_best_iou_takes_the_best_ground_truth_box():
    truth = np.array([[0, 0, 9, 9], [50, 50, 59, 59]])
    boxes = np.array([[50, 50, 59, 59], [0, 0, 4, 9], [100, 100, 110, 110]])
    np.testing.assert_allclose(best_iou(boxes, truth), [1.0, 0.5, 0.0])


def test_edge_to_inclusive():
    np.testing.assert_array_equal(edge_to_inclusive(np.array([3.0, 4.0, 6.0, 8.0])), [3, 4, 5, 7])


def test_classification_errors():
    classes = np.array([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5], [0, 1, 2, 3, 4], [7, 7, 7, 7, 7]])
    labels = np.array([1, 5, 9, 7])
    top1, top5 = classification_errors(classes, labels)
    assert top1 == pytest.approx(0.5)  # images 0 and 3 right at top 1
    assert top5 == pytest.approx(0.25)  # image 2 wrong in all five


def test_localization_needs_right_class_and_good_box():
    truth = np.array([[10, 10, 29, 29]])
    classes = np.array([4, 2, 2])
    boxes = np.array([[10, 10, 29, 29], [0, 0, 5, 5], [10, 10, 29, 29]])
    # Wrong class with a perfect box; right class with a bad box; right class with a good box.
    assert localization_hits(classes, boxes, 2, truth).tolist() == [False, False, True]


def test_localization_errors_with_several_images():
    hits = np.array([[True, False, False, False, False],
                     [False, False, False, True, False],
                     [False] * 5,
                     [False, True, False, False, False]])
    top1, top5 = localization_errors(hits)
    assert top1 == pytest.approx(0.75)
    assert top5 == pytest.approx(0.25)


def test_no_detection_gives_the_empty_box():
    cam = np.zeros((8, 8), dtype=np.float32)
    # Nothing is strictly above int(tau * max) = 0: wsolevaluation's (0, 0, 0, 0) box.
    np.testing.assert_array_equal(contour_boxes(cam, 0.5), [[0, 0, 0, 0]])


def test_contour_boxes_find_every_region():
    cam = np.zeros((20, 20), dtype=np.float32)
    cam[2:5, 3:7] = 1.0
    cam[10:18, 10:12] = 0.6
    boxes = contour_boxes(cam, 0.5)
    # wsolevaluation's boxes: (x, y, x + w, y + h) from cv2.boundingRect.
    assert sorted(map(tuple, boxes.astype(int).tolist())) == [(3, 2, 7, 5), (10, 10, 12, 18)]
    np.testing.assert_array_equal(contour_boxes(cam, 0.7), [[3, 2, 7, 5]])


def test_maxboxacc_on_hand_made_maps():
    # Image 1: one blob, exactly the ground truth. Image 2: a map whose blob misses the truth.
    cam1 = np.zeros((20, 20), dtype=np.float32)
    cam1[5:10, 5:10] = 1.0
    cam2 = np.zeros((20, 20), dtype=np.float32)
    cam2[0:3, 0:3] = 1.0
    acc = MaxBoxAcc()
    acc.add(cam1, np.array([[5, 5, 10, 10]]))  # contour box (5, 5, 10, 10) equals it: IoU 1
    acc.add(cam2, np.array([[10, 10, 19, 19]]))  # never overlaps
    assert acc.count == 2
    # Image 1 is right at every CAM threshold and every IoU threshold; image 2 never.
    assert acc.value() == pytest.approx(0.5)
    np.testing.assert_allclose(acc.accuracy(), 0.5)


def test_maxboxacc_takes_the_best_threshold_per_iou():
    # A bright core (the truth) inside a faint halo: a low threshold gives the halo's box,
    # a high one the core's.
    cam = np.zeros((40, 40), dtype=np.float32)
    cam[5:35, 5:35] = 0.3
    cam[15:25, 15:25] = 1.0
    acc = MaxBoxAcc()
    acc.add(cam, np.array([[15, 15, 25, 25]]))
    low, high = acc.accuracy()[:, 10], acc.accuracy()[:, 50]
    assert low.tolist() == [0.0, 0.0, 0.0]  # the halo box: IoU 121/961 < 0.3
    assert high.tolist() == [1.0, 1.0, 1.0]
    assert acc.value() == 1.0
