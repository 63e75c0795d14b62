from dinossl.config import load_config
from dinossl.train.run_folder import differing_fields


def test_differing_fields_ignore_runtime_settings():
    a = load_config("vit-tiny-cifar").to_dict()
    b = load_config("vit-tiny-cifar", overrides=["data.num_workers=7", "train.log_every=3", "optim.base_lr=0.1"]).to_dict()
    assert differing_fields(a, b) == ["optim.base_lr"]


def test_fields_added_since_a_run_was_written_count_as_defaults():
    current = load_config("vit-tiny-cifar").to_dict()
    stored = load_config("vit-tiny-cifar").to_dict()
    del stored["data"]["crops"]["grayscale_p"]  # an older run folder, before the field existed
    assert differing_fields(stored, current) == []
    stored["data"]["crops"]["num_local"] = 3
    assert differing_fields(stored, current) == ["data.crops.num_local"]


def test_tf32_may_change_on_resume_like_the_device():
    a = load_config("vit-tiny-cifar").to_dict()
    b = load_config("vit-tiny-cifar", overrides=["train.tf32=false", "train.device=cpu"]).to_dict()
    assert differing_fields(a, b) == []
def test_the_ablation_settings_decide_what_a_run_computes():
    """A run folder refuses a resume that changes any ablation switch; the student's k-NN
    check only looks at the networks, so it may change."""
    a = load_config("vit-tiny-cifar").to_dict()
    changes = ["optim.teacher_update=student", "loss.centering=none", "loss.sinkhorn_iterations=5",
               "loss.sharpening=false", "loss.criterion=mse", "model.predictor=true"]
    for change in changes:
        b = load_config("vit-tiny-cifar", overrides=[change]).to_dict()
        assert differing_fields(a, b) == [change.split("=")[0]]
    assert differing_fields(a, load_config("vit-tiny-cifar", overrides=["train.knn_student=true"]).to_dict()) == []
