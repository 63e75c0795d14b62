import numpy as np
import torch
import torch.nn.functional as F

from dinossl.data import evaluation_transform
from dinossl.data.sample import load_sample
from dinossl.eval.baselines import UnitRangePixels
from dinossl.eval.classification.knn import knn_predictions
from dinossl.eval.classification.knn_monitor import SampleKnnMonitor


def test_unit_range_pixels_undo_the_normalisation_and_centre_each_image():
    image = load_sample("heldout").load(0)[0]
    normalised = evaluation_transform(resize=32, crop=32)(image).unsqueeze(0)
    pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float().div(255).reshape(1, -1)
    assert torch.allclose(UnitRangePixels()(normalised), pixels, atol=1e-5)
    centred = UnitRangePixels(mean_subtracted=True)(normalised)
    assert torch.allclose(centred, pixels - pixels.mean(), atol=1e-5)
    assert abs(centred.sum().item()) < 1e-3


def _restated_pixel_knn(queries: int, mean_subtracted: bool) -> float:
    """The sample k-NN on [0, 1] pixels, written out with numpy arrays straight from the sample."""
    def arrays(split, count=None):
        source = load_sample(split)
        count = count or len(source)
        x = torch.from_numpy(source.pixels[:count].astype(np.float32) / 255).permute(0, 3, 1, 2).reshape(count, -1)
        if mean_subtracted:
            x = x - x.mean(dim=1, keepdim=True)
        return F.normalize(x, dim=1), torch.from_numpy(source.labels[:count])
    bank, bank_labels = arrays("train")
    query, query_labels = arrays("heldout", queries)
    predicted = knn_predictions(bank, bank_labels, query, 20, 10, 0.07)
    return 100.0 * (predicted == query_labels).float().mean().item()


def test_the_monitor_scores_pixels_as_a_direct_restatement_does():
    monitor = SampleKnnMonitor(32, torch.device("cpu"))
    monitor.query_source.pixels = monitor.query_source.pixels[:300]
    monitor.query_source.labels = monitor.query_source.labels[:300]
    plain = monitor.top1(UnitRangePixels())
    centred = monitor.top1(UnitRangePixels(mean_subtracted=True))
    assert abs(plain - _restated_pixel_knn(300, False)) < 0.5
    assert abs(centred - _restated_pixel_knn(300, True)) < 0.5
    assert centred > plain  # the centred baseline is the stronger one on this sample
