"""Learnable quantization scales for QAT (LSQ: the step size is trained by gradient).

The fake-quantizers first observe (the warm-up: calibration on training inputs
gives each its min/max range), then each is replaced by torch's learnable
fake-quantizer holding the same scale and zero-point, with observation off: from
there the scale is a parameter, trained with the weights, so a quantizer can
trade clipping a few outliers for resolution on everything else. Zero-points
stay where the warm-up put them (symmetric weights keep 0), as the exported QDQ
model uses one integer zero-point per tensor or channel.

Adam moves every parameter by about its learning rate per step whatever the
gradient's size, so each scale gets its own learning rate: ``relative_lr`` times
its starting value (scales range from 1e-4 on a weight channel to 1e0 on an
outlier activation).
"""

from __future__ import annotations


def _learnable_like(fq, channels: int):
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    obs = fq.activation_post_process
    kwargs = {"dtype": fq.dtype, "qscheme": fq.qscheme}
    if channels > 0:
        kwargs["ch_axis"] = fq.ch_axis
    new = _LearnableFakeQuantize(
        observer=type(obs),
        quant_min=fq.quant_min,
        quant_max=fq.quant_max,
        channel_len=channels if channels > 0 else -1,
        use_grad_scaling=True,
        **kwargs,
    )
    new.scale.data.copy_(fq.scale.detach().reshape(new.scale.shape).float())
    new.zero_point.data.copy_(fq.zero_point.detach().reshape(new.zero_point.shape).float())
    new.fake_quant_enabled.copy_(fq.fake_quant_enabled)
    new.enable_param_learning()
    new.zero_point.requires_grad = False
    return new


def make_learnable(module, relative_lr: float) -> list[dict]:
    """Swap every observed fake-quantizer of ``module`` for a learnable one (in place);
    returns the optimizer parameter groups of the scales. Quantizers that never saw
    data (no finite positive scale) are left as they are."""
    import torch
    from torch.ao.quantization import FakeQuantize

    groups: list[dict] = []
    swaps = []
    for name, sub in module.named_modules():
        if not isinstance(sub, FakeQuantize):
            continue
        scale = sub.scale.detach()
        if not scale.numel() or not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            continue
        per_channel = sub.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        swaps.append((name, _learnable_like(sub, scale.numel() if per_channel else -1)))
    for name, new in swaps:
        owner, _, attr = name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, attr, new)
        groups.append(
            {
                "params": [new.scale],
                "lr": relative_lr * float(new.scale.detach().mean()),
                "weight_decay": 0.0,
            }
        )
    return groups


def other_parameters(module, groups: list[dict]) -> list:
    """``module``'s trainable parameters not in ``groups`` (the weights)."""
    taken = {id(p) for g in groups for p in g["params"]}
    return [p for p in module.parameters() if p.requires_grad and id(p) not in taken]


def freeze(module) -> None:
    """The scales are final (they go to the export as quantizer overrides, not weights)."""
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    for sub in module.modules():
        if isinstance(sub, _LearnableFakeQuantize):
            sub.toggle_qparam_learning(enabled=False)
