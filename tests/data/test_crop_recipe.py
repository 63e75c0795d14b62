import pytest

from dinossl.config import CropConfig
from dinossl.data.augment import MultiCropAugmentation
from dinossl.data.batched_crops import BatchedMultiCrops
from dinossl.data.crop_recipe import CropRecipe, ViewSpec
from dinossl.data.geometric_crops import GeometricMultiCrop


def test_dino_recipe_has_two_global_views_then_the_local_views():
    recipe = CropRecipe.from_config(CropConfig(global_size=224, local_size=96, num_local=3))
    assert recipe.num_global == 2 and recipe.num_views == 5
    assert [v.size for v in recipe.views] == [224, 224, 96, 96, 96]
    assert [v.photometry.blur_p for v in recipe.views] == [1.0, 0.1, 0.5, 0.5, 0.5]
    assert [v.photometry.solarize_p for v in recipe.views] == [0.0, 0.2, 0.0, 0.0, 0.0]
    assert recipe.views[0].scale == (0.4, 1.0) and recipe.views[2].scale == (0.05, 0.4)


def test_global_crop_only_recipe():
    recipe = CropRecipe.from_config(CropConfig(num_local=0))
    assert recipe.num_views == recipe.num_global == 2


def test_every_crop_path_cuts_the_views_of_the_recipe():
    crops = CropConfig(global_size=32, local_size=16, num_local=4)
    recipe = CropRecipe.from_config(crops)
    for path in (MultiCropAugmentation(crops), GeometricMultiCrop(crops), BatchedMultiCrops(crops)):
        assert path.recipe == recipe


def test_a_recipe_lists_its_global_views_first():
    spec = CropRecipe.from_config(CropConfig(num_local=1)).views
    with pytest.raises(ValueError):
        CropRecipe((spec[2], spec[0]))
    with pytest.raises(ValueError):
        CropRecipe(())
    assert isinstance(spec[0], ViewSpec)
