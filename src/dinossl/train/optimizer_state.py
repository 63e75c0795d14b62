"""Saved optimiser states against the current model: the older last-layer order, and a shape check.

``torch.optim.Optimizer.load_state_dict`` pairs saved states with parameters by position and
checks neither names nor shapes. Checkpoints written before the head's last layer registered
``weight_g`` ahead of ``weight_v`` (torch's weight-norm order, the reference's) list those two
the other way round; their states are put back on the right parameters here. Any other state
that does not fit its parameter's shape is refused with one line.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dinossl.errors import CheckpointError

LAST_LAYER_G = "head.last_layer.weight_g"
LAST_LAYER_V = "head.last_layer.weight_v"


def written_with_v_before_g(model_keys: list[str]) -> bool:
    """Whether a saved state dict's keys (in saved order) have the older ``weight_v``-first order."""
    if LAST_LAYER_G not in model_keys or LAST_LAYER_V not in model_keys:
        return False
    return model_keys.index(LAST_LAYER_V) < model_keys.index(LAST_LAYER_G)


def _optimized_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """Names of the optimiser's parameters in its (flattened) group order."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of.get(id(p), "?") for group in optimizer.param_groups for p in group["params"]]


def fit_optimizer_state(
    saved: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module, model_keys: list[str], where: str
) -> dict[str, Any]:
    """The saved optimiser state dict, ready for ``optimizer.load_state_dict``.

    ``model_keys`` are the keys of the model state dict saved with it, in saved order (they
    tell the older last-layer order apart); ``where`` names the checkpoint in errors.
    Raises CheckpointError when a saved state's shape does not fit its parameter.
    """
    names = _optimized_names(optimizer, model)
    saved_ids = [i for group in saved["param_groups"] for i in group["params"]]
    if len(saved_ids) != len(names):
        raise CheckpointError(
            f"{where}: the saved optimiser holds {len(saved_ids)} parameters, this model trains {len(names)}")
    state = dict(saved["state"])
    if written_with_v_before_g(model_keys) and LAST_LAYER_G in names and LAST_LAYER_V in names:
        # Saved position of each name: the current order with g and v exchanged.
        g, v = names.index(LAST_LAYER_G), names.index(LAST_LAYER_V)
        saved_g, saved_v = saved["state"].get(saved_ids[v]), saved["state"].get(saved_ids[g])
        for position, entry in ((g, saved_g), (v, saved_v)):
            state.pop(saved_ids[position], None)
            if entry is not None:
                state[saved_ids[position]] = entry
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, param, saved_id in zip(names, params, saved_ids):
        for key, value in state.get(saved_id, {}).items():
            if torch.is_tensor(value) and value.ndim > 0 and value.shape != param.shape:
                raise CheckpointError(
                    f"{where}: the saved optimiser state {key!r} of {name} is {tuple(value.shape)}, "
                    f"the parameter is {tuple(param.shape)}")
    return {**saved, "state": state}
