"""Study files: the shipped studies, checks of a study's structure, and the order in which the
settings of a variant are applied."""

import pytest

from dinossl.errors import ConfigError
from dinossl.study import load_study, study_from_dict, study_names, variant_configs


def test_the_shipped_studies_resolve_to_valid_configurations():
    assert study_names() == ["collapse", "components", "multicrop", "teacher"]
    for name in study_names():
        study = load_study(name)
        configs = variant_configs(study)
        assert [v.name for v, _ in configs] == [v.name for v in study.variants] and study.description


def test_the_shipped_studies_are_the_papers_settings():
    collapse = {v.name: c for v, c in variant_configs(load_study("collapse"))}
    assert not collapse["centering-only"].loss.sharpening and collapse["centering-only"].loss.centering == "ema"
    assert collapse["sharpening-only"].loss.sharpening and collapse["sharpening-only"].loss.centering == "none"
    components = {v.name: c for v, c in variant_configs(load_study("components"))}
    swav = components["9-no-momentum-sinkhorn"]
    assert (swav.optim.teacher_update, swav.loss.centering) == ("student", "sinkhorn")
    assert components["4-no-multicrop"].data.crops.num_local == 0
    teacher = {v.name: c for v, c in variant_configs(load_study("teacher"))}
    assert [c.optim.teacher_update for c in teacher.values()] == ["student", "previous_iteration", "previous_epoch",
                                                                  "ema"]
    assert all(c.train.knn_student for c in teacher.values())
    multicrop = [c for _, c in variant_configs(load_study("multicrop"))]
    assert [c.data.crops.num_local for c in multicrop] == [0, 2, 6, 10]
    assert all((c.model.arch, c.model.patch_size, c.data.crops.global_size, c.data.crops.local_size)
               == ("vit_small", 16, 224, 96) for c in multicrop)


def test_settings_apply_base_then_config_file_then_overrides_then_the_variant(tmp_path):
    study = study_from_dict("s", {
        "base": {"preset": "vit-tiny-cifar", "train": {"epochs": 7}, "optim": {"base_lr": 0.1}},
        "variants": [{"name": "a", "overrides": ["optim.base_lr=0.3"]}, {"name": "b"}],
    })
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train:\n  epochs: 8\n  seed: 5\noptim:\n  base_lr: 0.2\n")
    (a, ca), (b, cb) = variant_configs(study, config_file, ["train.seed=6"])
    assert ca.model.arch == "vit_tiny"  # the preset
    assert (ca.train.epochs, ca.train.seed, ca.optim.base_lr) == (8, 6, 0.3)
    assert (cb.train.epochs, cb.train.seed, cb.optim.base_lr) == (8, 6, 0.2)
    assert b.label == "(base)" and a.label == "optim.base_lr=0.3"


@pytest.mark.parametrize("values,needle", [
    ({"variants": []}, "non-empty list"),
    ({"variants": [{"name": "a"}], "extra": 1}, "unknown key 'extra'"),
    ({"base": [1], "variants": [{"name": "a"}]}, "base must be a mapping"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "'a' is listed twice"),
    ({"variants": [{"name": "../up"}]}, "folder name"),
    ({"variants": [{"name": "study-x"}]}, "not starting with 'study'"),
    ({"variants": [{"name": "a", "overrides": "loss.centering=none"}]}, "list of KEY=VALUE"),
    ({"variants": [{"name": "a", "note": "x"}]}, "variant 1 must be a mapping"),
])
def test_bad_study_files_are_refused_with_one_line(values, needle):
    with pytest.raises(ConfigError, match=needle):
        study_from_dict("s", values)


def test_a_bad_variant_is_named():
    study = study_from_dict("s", {"base": {"preset": "vit-tiny-cifar"},
                                  "variants": [{"name": "ok"}, {"name": "bad", "overrides": ["loss.centering=mean"]}]})
    with pytest.raises(ConfigError, match="study s, variant bad: loss.centering: unknown centering 'mean'"):
        variant_configs(study)


def test_unknown_study_names_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown study 'colapse'"):
        load_study("colapse")
    with pytest.raises(ConfigError, match="does not exist"):
        load_study(str(tmp_path / "mine.yaml"))
    path = tmp_path / "mine.yaml"
    path.write_text("base: {preset: vit-tiny-cifar}\nvariants:\n  - name: x\n    overrides: [train.epochs=2]\n")
    assert load_study(str(path)).name == "mine"
