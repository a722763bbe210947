"""Image transforms on float tensors ``[C, H, W]``: resize, crops, flip, normalise, compose.

Why native transforms: torchvision has no CPU wheel that installs beside the torch this project
pins, and the few transforms a multi-task image run needs are a handful of lines of torch each
(resize is ``torch.nn.functional.interpolate`` with ``antialias=True``, the same kernel torchvision
uses for tensors). :func:`build_transforms` therefore has three backends:

* ``"native"``: the classes of this module, always available;
* ``"torchvision"``: the ``torchvision.transforms.v2`` equivalents (``Resize``, ``CenterCrop``,
  ``RandomCrop``, ``RandomHorizontalFlip``, ``Normalize``, ``Compose``), imported only when asked
  for, with a clear error where torchvision is missing;
* ``"auto"`` (default): torchvision v2 where it imports, else native. Users who have torchvision
  get the reference implementation they know (and its other transforms compose with it); everyone
  else gets the same recipe without a new dependency. Pass ``backend="native"`` to get identical
  behaviour on every machine.

Randomness. Random transforms draw from a ``torch.Generator`` given at construction, or from
torch's global RNG. Inside a ``DataLoader`` worker a given generator is *not* used: every worker
holds a copy of it in the same state, so all workers (and, with non-persistent workers, all
epochs) would replay the same augmentations. There the global RNG is used instead, which the
``DataLoader`` seeds per worker and per epoch from its own ``generator``: a loader built with
``generator=torch.Generator().manual_seed(s)`` gives the same augmentations on every run, whatever
``num_workers``. With ``num_workers=0`` a transform's generator (or ``torch.manual_seed``) makes a
run reproducible. The torchvision backend draws from the global RNG only.

Every transform also accepts a batch ``[..., C, H, W]``; a random transform then draws once for
the whole batch.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import get_worker_info

__all__ = [
    "NORMALIZE_PRESETS",
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "build_transforms",
    "torchvision_available",
]

TransformFn = Callable[[Tensor], Tensor]

NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # Channel means / stds of the ImageNet training set (RGB), as used by pretrained trunks.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Pixel mean / std of the MNIST training set (grey).
    "mnist": ((0.1307,), (0.3081,)),
}
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_BACKENDS = ("auto", "native", "torchvision")


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    """``(h, w)`` from an int (a square) or a pair, refusing non-positive sizes."""
    if isinstance(size, bool):
        raise ValueError(f"{what}: size must be an int or [height, width], got {size!r}")
    if isinstance(size, int):
        hw = (size, size)
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"{what}: size must be an int or [height, width], got {size!r}")
    if min(hw) <= 0:
        raise ValueError(f"{what}: size must be positive, got {size!r}")
    return hw


def _check_image(img: Tensor, what: str) -> None:
    if not isinstance(img, Tensor) or img.ndim < 3:
        shape = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(
            f"{what}: expected an image tensor [C, H, W] (or [..., C, H, W]), got {shape}"
        )
    if not img.is_floating_point():
        raise ValueError(f"{what}: expected a float image (values in [0, 1]), got {img.dtype}")


def _rng(own: torch.Generator | None) -> torch.Generator | None:
    """The generator to draw from: the transform's own, except inside a DataLoader worker."""
    if own is not None and get_worker_info() is not None:
        return None  # the worker's global RNG, seeded by the DataLoader per worker and epoch
    return own


def _crop(img: Tensor, top: int, left: int, h: int, w: int) -> Tensor:
    return img[..., top : top + h, left : left + w]


class Resize:
    """Resize with ``interpolate`` (antialiased for bilinear / bicubic, so downscaling does not alias).

    ``size`` an int scales the *shorter* side to it and keeps the aspect ratio (the longer side is
    ``int(size * long / short)``, as in torchvision); ``[h, w]`` gives that exact size. Bicubic
    can overshoot [0, 1] slightly; bilinear and nearest cannot.
    """

    def __init__(self, size: int | Sequence[int], interpolation: str = "bilinear") -> None:
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Resize: interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}"
            )
        self.size: int | tuple[int, int] = (
            _pair(size, "Resize")[0] if isinstance(size, int) else _pair(size, "Resize")
        )
        self.interpolation = interpolation

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if isinstance(self.size, tuple):
            return self.size
        if h <= w:
            return self.size, int(self.size * w / h)
        return int(self.size * h / w), self.size

    def __call__(self, img: Tensor) -> Tensor:
        _check_image(img, "Resize")
        h, w = int(img.shape[-2]), int(img.shape[-1])
        nh, nw = self.output_size(h, w)
        if (nh, nw) == (h, w):
            return img
        lead = img.shape[:-3]
        flat = img.reshape(-1, *img.shape[-3:])
        if self.interpolation == "nearest":
            out = F.interpolate(flat, size=(nh, nw), mode="nearest")
        else:
            out = F.interpolate(
                flat, size=(nh, nw), mode=self.interpolation, align_corners=False, antialias=True
            )
        return out.reshape(*lead, *out.shape[-3:])

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, interpolation={self.interpolation!r})"


class CenterCrop:
    """The central ``size`` window; an image smaller than ``size`` is zero-padded first.

    The offset is ``round((H - h) / 2)``, as in torchvision, so both backends cut the same pixels.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "CenterCrop")

    def __call__(self, img: Tensor) -> Tensor:
        _check_image(img, "CenterCrop")
        th, tw = self.size
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if h < th or w < tw:
            pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
            img = F.pad(img, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            h, w = int(img.shape[-2]), int(img.shape[-1])
        top = round((h - th) / 2.0)
        left = round((w - tw) / 2.0)
        return _crop(img, top, left, th, tw)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class RandomCrop:
    """A uniformly placed ``size`` window, after zero-padding every side by ``padding`` pixels.

    Padding then cropping to the original size is the usual small-image augmentation (CIFAR: 32
    with padding 4): it shifts the content by up to ``padding`` pixels. An image that is still
    smaller than ``size`` after padding is an error, not silently padded more.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        padding: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _pair(size, "RandomCrop")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be a non-negative int, got {padding!r}")
        self.padding = padding
        self.generator = generator

    def __call__(self, img: Tensor) -> Tensor:
        _check_image(img, "RandomCrop")
        if self.padding:
            img = F.pad(img, (self.padding,) * 4)
        th, tw = self.size
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if h < th or w < tw:
            raise ValueError(
                f"RandomCrop: image {h}x{w} (after padding {self.padding}) is smaller than the "
                f"crop {th}x{tw}; resize first or crop smaller"
            )
        gen = _rng(self.generator)
        top = int(torch.randint(0, h - th + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - tw + 1, (1,), generator=gen))
        return _crop(img, top, left, th, tw)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``.

    Only for tasks whose labels do not change under mirroring (not for digits such as 2 vs 5
    written in mirror, nor for left/right labels); build_transforms applies it only in training.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.generator = generator

    def __call__(self, img: Tensor) -> Tensor:
        _check_image(img, "RandomHorizontalFlip")
        if float(torch.rand(1, generator=_rng(self.generator))) < self.p:
            return img.flip(-1)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(img - mean) / std`` per channel; one value for all channels or one per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        m = torch.as_tensor([float(v) for v in mean], dtype=torch.float32)
        s = torch.as_tensor([float(v) for v in std], dtype=torch.float32)
        if m.ndim != 1 or m.numel() == 0 or m.shape != s.shape:
            raise ValueError(
                f"Normalize: mean and std must be non-empty lists of equal length, got "
                f"{list(mean)} and {list(std)}"
            )
        if not bool((s > 0).all()):
            raise ValueError(f"Normalize: std must be positive, got {list(std)}")
        self.mean = m
        self.std = s

    def __call__(self, img: Tensor) -> Tensor:
        _check_image(img, "Normalize")
        c = int(img.shape[-3])
        if self.mean.numel() not in (1, c):
            raise ValueError(
                f"Normalize: {self.mean.numel()} channel statistics for an image with {c} "
                f"channel(s) (the ImageNet preset is for RGB: use channels=3 or give 1 value)"
            )
        mean = self.mean.to(img.device, img.dtype).view(-1, 1, 1)
        std = self.std.to(img.device, img.dtype).view(-1, 1, 1)
        return (img - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Compose:
    """Apply transforms in order (picklable, so it travels to DataLoader workers)."""

    def __init__(self, transforms: Sequence[TransformFn]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Tensor) -> Tensor:
        for t in self.transforms:
            img = t(img)
        return img

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


# ---------------------------------------------------------------------------------------- specs
def torchvision_available() -> bool:
    """Whether ``torchvision.transforms.v2`` imports here (it needs a torchvision built for this torch)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.transforms.v2")
    except Exception:  # a torchvision built for another torch fails in many ways at import
        return False
    return True


def _normalize_stats(value: Any) -> tuple[list[float], list[float]]:
    if isinstance(value, str):
        if value not in NORMALIZE_PRESETS:
            raise ValueError(
                f"transforms: unknown normalize preset {value!r}; use one of "
                f"{sorted(NORMALIZE_PRESETS)} or [mean, std]"
            )
        mean, std = NORMALIZE_PRESETS[value]
        return list(mean), list(std)
    if isinstance(value, Mapping) and set(value) == {"mean", "std"}:
        mean, std = value["mean"], value["std"]
    elif isinstance(value, Sequence) and len(value) == 2:
        mean, std = value
    else:
        raise ValueError(
            f"transforms: normalize must be a preset {sorted(NORMALIZE_PRESETS)}, [mean, std] or "
            f"{{mean: ..., std: ...}}, got {value!r}"
        )

    def floats(v: Any) -> list[float]:
        return [float(x) for x in v] if isinstance(v, Sequence) else [float(v)]

    return floats(mean), floats(std)


def _crop_args(value: Any) -> tuple[int | list[int], int]:
    """``(size, padding)`` from ``28``, ``[28, 24]`` or ``{size: 28, padding: 2}``."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"size", "padding"}
        if "size" not in value or unknown:
            raise ValueError(
                f"transforms: a crop mapping needs 'size' (and optionally 'padding'), got {dict(value)}"
            )
        return value["size"], int(value.get("padding", 0))
    return value, 0


# One operation of a spec: (name, argument); names as in _OPS.
_OPS = ("resize", "crop", "center_crop", "random_crop", "flip", "normalize")
_ALIASES = {"hflip": "flip", "horizontal_flip": "flip", "random_horizontal_flip": "flip"}
_DICT_ORDER = ("resize", "crop", "center_crop", "random_crop", "flip", "normalize")


def _operations(spec: Mapping[str, Any] | Sequence[Any] | None) -> list[tuple[str, Any]]:
    """The spec as an ordered list of ``(operation, argument)``."""
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        keys = {_ALIASES.get(str(k), str(k)): v for k, v in spec.items()}
        unknown = [k for k in keys if k not in _OPS]
        if unknown:
            raise ValueError(f"transforms: unknown key(s) {unknown}; known: {list(_OPS)}")
        # A mapping has no order a reader can rely on: apply in the one order that makes sense.
        return [(k, keys[k]) for k in _DICT_ORDER if k in keys]
    if isinstance(spec, str) or not isinstance(spec, Sequence):
        raise ValueError(
            f"transforms: expected a mapping like {{resize: 32, crop: 28}} or a list of "
            f"one-key mappings, got {spec!r}"
        )
    ops: list[tuple[str, Any]] = []
    for i, item in enumerate(spec):
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ValueError(
                f"transforms: list item {i} must be a one-key mapping like {{resize: 32}}, got {item!r}"
            )
        ((name, arg),) = item.items()
        name = _ALIASES.get(str(name), str(name))
        if name not in _OPS:
            raise ValueError(
                f"transforms: list item {i}: unknown operation {name!r}; known: {list(_OPS)}"
            )
        ops.append((name, arg))
    return ops


def _flip_probability(value: Any) -> float | None:
    if value is False or value is None:
        return None
    if value is True:
        return 0.5
    if isinstance(value, int | float):
        return float(value)
    raise ValueError(f"transforms: flip must be true/false or a probability, got {value!r}")


def build_transforms(
    spec: Mapping[str, Any] | Sequence[Any] | None,
    train: bool,
    backend: str = "auto",
    generator: torch.Generator | None = None,
) -> TransformFn:
    """A transform pipeline from a config-like spec; random augmentations only when ``train``.

    ``spec`` is either a mapping, applied in the fixed order resize, crop, flip, normalize::

        {"resize": 32, "crop": 28, "flip": True, "normalize": "imagenet"}

    or a list of one-key mappings, applied in the order given::

        [{"resize": [36, 36]}, {"random_crop": {"size": 32, "padding": 2}}, {"normalize": [[0.5], [0.5]]}]

    Operations: ``resize`` (int: shorter side; ``[h, w]``: exact), ``crop`` / ``random_crop``
    (size, or ``{size, padding}``: a random crop in training, the centre crop of the same size
    otherwise), ``center_crop``, ``flip`` (``true`` = p 0.5, or a probability; training only),
    ``normalize`` (``"imagenet"``, ``"mnist"``, ``[mean, std]`` or ``{mean, std}``).

    ``backend``: ``"auto"`` (torchvision v2 where it imports, else native), ``"native"`` or
    ``"torchvision"``; see the module docstring for why. ``generator`` seeds the native random
    transforms (outside DataLoader workers); the torchvision backend refuses one.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"transforms: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "torchvision" if torchvision_available() else "native"
    elif backend == "torchvision" and not torchvision_available():
        raise ImportError(
            "build_transforms(backend='torchvision') needs torchvision (with transforms.v2) built "
            "for the installed torch; install it, or use backend='native' (same operations, no "
            "extra dependency)"
        )
    if backend == "torchvision" and generator is not None:
        raise ValueError(
            "transforms: torchvision transforms draw from torch's global RNG only; drop generator= "
            "or use backend='native'"
        )
    steps: list[tuple[str, dict[str, Any]]] = []
    for name, arg in _operations(spec):
        if name == "resize":
            steps.append(("resize", {"size": arg}))
        elif name in ("crop", "random_crop", "center_crop"):
            size, padding = _crop_args(arg)
            if name != "center_crop" and train:
                steps.append(("random_crop", {"size": size, "padding": padding}))
            else:
                steps.append(("center_crop", {"size": size}))
        elif name == "flip":
            p = _flip_probability(arg)
            if train and p is not None and p > 0:
                steps.append(("flip", {"p": p}))
        else:
            mean, std = _normalize_stats(arg)
            steps.append(("normalize", {"mean": mean, "std": std}))
    if backend == "torchvision":
        return _torchvision_pipeline(steps)
    return Compose([_native_step(name, kw, generator) for name, kw in steps])


def _native_step(name: str, kw: dict[str, Any], generator: torch.Generator | None) -> TransformFn:
    if name == "resize":
        return Resize(kw["size"])
    if name == "center_crop":
        return CenterCrop(kw["size"])
    if name == "random_crop":
        return RandomCrop(kw["size"], kw["padding"], generator=generator)
    if name == "flip":
        return RandomHorizontalFlip(kw["p"], generator=generator)
    return Normalize(kw["mean"], kw["std"])


def _torchvision_pipeline(steps: list[tuple[str, dict[str, Any]]]) -> TransformFn:
    """The same steps with ``torchvision.transforms.v2`` (imported here, only when asked for)."""
    v2: Any = importlib.import_module("torchvision.transforms.v2")
    out: list[Any] = []
    for name, kw in steps:
        if name == "resize":
            size = kw["size"]
            _pair(size, "Resize")  # the same validation as the native backend
            out.append(
                v2.Resize(
                    size if isinstance(size, int) else list(size),
                    interpolation=v2.InterpolationMode.BILINEAR,
                    antialias=True,
                )
            )
        elif name == "center_crop":
            out.append(v2.CenterCrop(list(_pair(kw["size"], "CenterCrop"))))
        elif name == "random_crop":
            pad = kw["padding"]
            out.append(v2.RandomCrop(list(_pair(kw["size"], "RandomCrop")), padding=pad or None))
        elif name == "flip":
            out.append(v2.RandomHorizontalFlip(p=kw["p"]))
        else:
            Normalize(kw["mean"], kw["std"])  # validate like the native backend
            out.append(v2.Normalize(mean=kw["mean"], std=kw["std"]))
    composed: TransformFn = v2.Compose(out)
    return composed
