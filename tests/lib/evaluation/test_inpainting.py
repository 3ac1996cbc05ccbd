"""The baselines of completion metrics (evaluation.inpainting) against hand-made cases."""

import numpy as np

from diffusion_lib.evaluation.inpainting import _diversity, _hidden_mse, mean_fill, nearest_fill


def test_mean_fill_and_nearest_neighbour_fill_only_the_hidden_entries():
    train = np.array([[0, 0, 0, 0], [10, 10, 100, 100], [20, 20, 200, 200]], np.uint8)
    originals = np.array([[11, 9, 0, 0], [19, 21, 0, 0]], np.uint8)
    masks = np.array([[True, True, False, False]] * 2)
    assert mean_fill(originals, masks, train).tolist() == [[11, 9, 100, 100], [19, 21, 100, 100]]
    assert nearest_fill(originals, masks, train).tolist() == [
        [11, 9, 100, 100],  # nearest on the given entries: the second training row
        [19, 21, 200, 200],
    ]


def test_hidden_error_and_diversity_count_the_hidden_entries_only():
    truth = np.array([[0.0, 0.0, 1.0, 1.0]])
    masks = np.array([[True, False, False, True]])
    filled = np.array([[5.0, 0.5, 1.0, 9.0]])  # the given entries' errors do not count
    assert _hidden_mse(filled, truth, masks, 1.0) == (0.25 + 0.0) / 2
    completions = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 4.0, 0.0]])
    both = np.repeat(masks, 2, axis=0)
    assert _diversity(completions, both, np.array([7, 7]), 1.0) == np.sqrt(25.0 / 2)
