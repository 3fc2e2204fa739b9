"""torch.nn helpers."""
from __future__ import annotations

__all__ = ["linear_to_conv1x1"]


def linear_to_conv1x1(linear):
    """A Conv2d(in, K, 1) with the weights of a classifier's final Linear(in, K).

    Applied to a (B, in, H, W) feature map it gives, at every position, the
    logits the Linear gives for that position's feature vector: the FCN recipe
    for turning a classification network fully convolutional.

    Examples
    --------
    >>> import torch
    >>> from segpost.nn import linear_to_conv1x1
    >>> fc = torch.nn.Linear(8, 3)
    >>> conv = linear_to_conv1x1(fc)
    >>> features = torch.randn(2, 8, 5, 7)
    >>> expected = fc(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    >>> torch.allclose(conv(features), expected, atol=1e-6)
    True
    """
    import torch

    if not isinstance(linear, torch.nn.Linear):
        raise TypeError(f"expected a torch.nn.Linear, got {type(linear).__name__}")
    conv = torch.nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1, bias=linear.bias is not None)
    conv = conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(linear.out_features, linear.in_features, 1, 1))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv
