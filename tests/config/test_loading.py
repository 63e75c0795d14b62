import pytest

from dinossl.config import Config, load_config, parse_override, preset_names
from dinossl.errors import ConfigError


@pytest.mark.parametrize("preset", preset_names())
def test_presets_validate(preset):
    config = load_config(preset)
    assert isinstance(config, Config)


def test_paper_recipe_numbers():
    c = load_config("vit-small-imagenet")
    assert (c.model.arch, c.model.patch_size, c.model.out_dim) == ("vit_small", 16, 65536)
    assert (c.loss.student_temp, c.loss.warmup_teacher_temp, c.loss.teacher_temp) == (0.1, 0.04, 0.07)
    assert c.loss.warmup_teacher_temp_epochs == 30 and c.loss.center_momentum == 0.9
    assert (c.optim.base_lr, c.optim.min_lr, c.optim.warmup_epochs) == (5e-4, 1e-6, 10)
    assert (c.optim.weight_decay, c.optim.weight_decay_end, c.optim.clip_grad) == (0.04, 0.4, 3.0)
    assert (c.optim.momentum_teacher, c.optim.freeze_last_layer) == (0.996, 1)
    assert c.data.crops.num_local == 8 and c.data.crops.global_scale == (0.4, 1.0)
    assert c.data.crops.local_scale == (0.05, 0.4) and (c.data.crops.global_size, c.data.crops.local_size) == (224, 96)
    assert c.model.drop_path == 0.1 and c.train.batch_size_per_process == 64


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: vit-tiny-cifar\noptim:\n  base_lr: 0.002\ndata:\n  crops:\n    num_local: 2\n")
    c = load_config(yaml_path=path, overrides=["optim.base_lr=3e-3", "data.crops.global_scale=[0.5, 1.0]"])
    assert c.model.arch == "vit_tiny"  # from the preset named in the file
    assert c.optim.base_lr == 3e-3 and c.data.crops.num_local == 2
    assert c.data.crops.global_scale == (0.5, 1.0)


@pytest.mark.parametrize(
    "override,field",
    [
        ("optim.base_lr=-1", "optim.base_lr"),
        ("data.crops.global_size=30", "data.crops.global_size"),
        ("data.crops.num_local=-1", "data.crops.num_local"),
        ("model.arch=vit_huge", "model.arch"),
        ("optim.lr=1", "optim.lr"),
        ("train.epochs=zero", "train.epochs"),
        ("model.norm_last_layer=3", "model.norm_last_layer"),
        ("data.crops.local_scale=[0.5, 0.1]", "data.crops.local_scale"),
        ("loss.center_momentum=1.5", "loss.center_momentum"),
        ("optim.teacher_update=frozen", "optim.teacher_update"),
        ("loss.centering=median", "loss.centering"),
        ("loss.sinkhorn_iterations=0", "loss.sinkhorn_iterations"),
        ("loss.sharpening=maybe", "loss.sharpening"),
        ("loss.criterion=l1", "loss.criterion"),
        ("model.predictor=2", "model.predictor"),
        ("train.knn_student=yes please", "train.knn_student"),
        ("optim.implementation=magic", "optim.implementation"),
        ("train.host_allocator=jemalloc", "train.host_allocator"),
        (["model.arch=resnet50", "train.pack_crops=true"], "train.pack_crops"),
        (["model.arch=resnet50", "train.activation_checkpointing=true"], "train.activation_checkpointing"),
        (["data.photometric=loader", "data.geometric=device"], "data.geometric"),
        ("nonsense", "nonsense"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        load_config("vit-tiny-cifar", overrides=override if isinstance(override, list) else [override])
    assert str(info.value).startswith(field)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  archh: vit_small\n")
    with pytest.raises(ConfigError, match="model.archh: unknown"):
        load_config(yaml_path=path)


def test_parse_override_types():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a.b=/some/path") == (["a", "b"], "/some/path")


def test_the_shipped_presets_are_the_documented_five():
    assert preset_names() == ["resnet50-imagenet", "vit-base-imagenet", "vit-small-imagenet", "vit-tiny-cifar",
                              "vit-tiny-cifar-long"]


def test_the_long_cifar_preset_is_the_default_run_made_longer():
    default, long = load_config("vit-tiny-cifar"), load_config("vit-tiny-cifar-long")
    assert long.data.crops == default.data.crops and long.model == default.model and long.loss == default.loss
    assert long.train.epochs > default.train.epochs and long.train.knn_every > 0


def test_a_key_given_twice_in_yaml_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("optim:\n  base_lr: 0.1\n  base_lr: 0.2\n")
    with pytest.raises(ConfigError, match="line 3: key 'base_lr' appears twice"):
        load_config(yaml_path=path)


def test_a_yaml_file_without_a_preset_key_starts_from_the_reference_defaults(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("optim:\n  base_lr: 0.002\n")
    assert load_config(yaml_path=path).model.arch == "vit_small"
    assert load_config(preset="vit-tiny-cifar", yaml_path=path).model.arch == "vit_tiny"


def test_the_ablation_settings_default_to_dino():
    c = load_config("vit-tiny-cifar")
    assert (c.optim.teacher_update, c.loss.centering, c.loss.sharpening, c.loss.criterion, c.model.predictor,
            c.loss.sinkhorn_iterations, c.train.knn_student) == ("ema", "ema", True, "cross_entropy", False, 3, False)
    c = load_config("vit-tiny-cifar", overrides=["optim.teacher_update=previous_epoch", "loss.centering=sinkhorn",
                                                 "loss.sharpening=false", "loss.criterion=mse", "model.predictor=true"])
    assert (c.optim.teacher_update, c.loss.centering, c.loss.sharpening, c.loss.criterion, c.model.predictor) == (
        "previous_epoch", "sinkhorn", False, "mse", True)
