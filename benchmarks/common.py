"""What the CPU and GPU benchmarks share: the networks and the PyTorch loss of each."""

from __future__ import annotations

# name: (file, network, --set overrides, batch, loss)
NETS = {
    "lenet5": ("lenet5.net", None, {}, 64, "cross_entropy(logits, label)"),
    "simple_cnn": ("simple_cnn.net", None, {}, 64, "cross_entropy(logits, label)"),
    "unet_small": ("unet.net", None, {"base": 16, "size": 128}, 4,
                   "bce(mask, target) + dice(mask, target)"),
    "resnet18_cifar": ("resnet18.net", "resnet18_cifar", {}, 32,
                       "cross_entropy(logits, label)"),
    "vit_tiny": ("vit_tiny.net", None, {}, 32, "cross_entropy(logits, label)"),
}


def make_batch(net, batch: int, np):
    """Random inputs, and class labels or binary masks as targets, seeded."""
    rng = np.random.default_rng(0)
    data = {k: rng.standard_normal(t.full_shape(batch)).astype(np.float32)
            for k, t in net.inputs.items()}
    for t in net.outputs.values():
        if t.rank == 1:
            data["label"] = rng.integers(0, t.shape[0], batch)
        else:
            data["target"] = (rng.random(t.full_shape(batch)) > 0.5).astype(np.float32)
    return data


def torch_loss(torch, out: dict, data: dict):
    """The same losses as NETS, written with torch (cross-entropy, or BCE + soft Dice)."""
    if "label" in data:
        return torch.nn.functional.cross_entropy(out["logits"], data["label"])
    p, t = out["mask"], data["target"]
    inter = (p * t).sum(dim=(0, 2, 3))
    union = p.sum(dim=(0, 2, 3)) + t.sum(dim=(0, 2, 3))
    return torch.nn.functional.binary_cross_entropy(p, t) + \
        1 - ((2 * inter + 1) / (union + 1)).mean()
