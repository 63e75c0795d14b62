import pytest

from dinossl.errors import DataError
from dinossl.eval.attention.feature_pca import PcaSettings
from dinossl.eval.attention.report import AttentionSettings
from dinossl.eval.frames import check_video_settings


@pytest.mark.parametrize("fps, name, message", [(0, "a.gif", "fps must be positive"),
                                                (10, "a.avi", "ending in .gif or .mp4"),
                                                (10, "sub/a.mp4", "a file name")])
def test_video_settings_are_refused_before_any_picture(fps, name, message):
    """One rule for the video a picture command writes, used by dino attention and dino features."""
    for check in (lambda: check_video_settings(fps, name), lambda: AttentionSettings(fps=fps, video_name=name),
                  lambda: PcaSettings(fps=fps, video_name=name)):
        with pytest.raises(DataError, match=message):
            check()


def test_gif_and_mp4_names_are_accepted():
    check_video_settings(10, "a.gif")
    check_video_settings(0.5, "clip.MP4")
