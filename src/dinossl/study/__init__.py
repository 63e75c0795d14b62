"""Studies: several variants of one training configuration (the paper's ablations), each trained in
its own run folder, reported side by side (``dino study``). This layer sits above the
evaluations (it trains and reads the k-NN monitor) and below the command line."""

from dinossl.study.definition import Study, Variant, load_study, study_from_dict, study_names, variant_configs
from dinossl.study.figure import check_figure_dependencies, write_figure
from dinossl.study.results import VariantResult, read_variant
from dinossl.study.runner import StudyOutcome, check_study_folder, run_study, write_outputs

__all__ = [
    "Study",
    "StudyOutcome",
    "Variant",
    "VariantResult",
    "check_figure_dependencies",
    "check_study_folder",
    "load_study",
    "read_variant",
    "run_study",
    "study_from_dict",
    "study_names",
    "variant_configs",
    "write_figure",
    "write_outputs",
]
