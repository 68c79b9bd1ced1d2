"""Synthetic degradations on torch tensors: Real-ESRGAN's second-order pipeline and the paper's five mixtures.

Images are (B, 3, H, W) float RGB in 0..1 on any device; the result is float32 on the same device.
Every random draw goes through the `torch.Generator` the caller passes (never the global RNG), so one
seed gives one output. Draws happen on the generator's device: pass a generator on the images' device
for speed (a CPU generator with CUDA images works too, the noise is then drawn on the CPU and copied).
A CPU and a CUDA generator with the same seed give different streams.

Training (paper section 3.4: "the degradation settings from Real-ESRGAN"): `RealESRGANDegradation`
follows Wang et al. 2021 (Real-ESRGAN) with the defaults of its public `train_realesrnet_x4plus.yml`:
two rounds of [blur -> random resize -> Gaussian or Poisson noise (colour or grey) -> JPEG], the
second round without its own JPEG, then [resize to H/scale + sinc filter] and JPEG in random order,
then rounding to 8 bits. Unlike Real-ESRGAN, whose batch shares one resize scale and interpolation mode
per round (tensor shapes must agree), every batch item here draws all its parameters independently.

Evaluation (paper Table 1): `PRESETS` holds the five fixed mixtures as data and `apply_preset` applies
one. Choices the paper does not state, made here:
- noise sigma is on the 0..255 scale (sigma=40 means a standard deviation of 40/255), Gaussian,
  independent per colour channel, added then clipped to 0..1;
- blur is an isotropic Gaussian, kernel size 21 (+-10 px = +-5 sigma, so the cut-off tails are
  negligible; 21 is also Real-ESRGAN's largest kernel), reflect padding;
- SR x4 is a bicubic downscale to (H // 4, W // 4) with antialiasing (like PIL's or MATLAB's
  imresize, the usual way SR test sets are made); H and W must be multiples of 4;
- the order is blur -> downscale -> noise -> JPEG; JPEG is libjpeg through Pillow (4:2:0 chroma);
- the result is rounded to 8 bits, as a saved LQ image would be; `resize_back=True` then upsamples it
  bicubically to the HQ size (the restoration networks take the LQ at the HQ size).

JPEG backends: "kornia" (`kornia.enhance.jpeg_codec_differentiable`, batched, runs on the GPU; it
rounds DCT coefficients with a smooth polynomial, so it compresses slightly less than libjpeg: on a
256 px photo it was 0.5-0.7 dB closer to the original than Pillow at q=30..95 and 41-46 dB from Pillow's
output) and "libjpeg" (Pillow per image on the CPU: the real codec, not differentiable).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.errors import DiffBodyError, MissingDependency

JPEG_BACKENDS = ("kornia", "libjpeg")
RESIZE_MODES = ("area", "bilinear", "bicubic")
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


class DegradationError(DiffBodyError):
    """An input or a setting the degradation code cannot use."""


@dataclass(frozen=True)
class Op:
    """One applied (or, in `PRESETS`, one planned) operation: its name and parameters."""

    name: str
    params: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Random draws: every one goes through the caller's generator.
# --------------------------------------------------------------------------------------------------


def _rand(generator: torch.Generator) -> float:
    return torch.rand((), generator=generator, device=generator.device).item()


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * _rand(generator)


def _choice(generator: torch.Generator, options: Sequence, probs: Sequence[float] | None = None):
    """One of `options`, with probabilities `probs` (uniform when None; they need not sum to 1)."""
    if probs is None:
        probs = [1.0] * len(options)
    if len(probs) != len(options):
        raise DegradationError(f"{len(options)} options but {len(probs)} probabilities")
    threshold = _rand(generator) * sum(probs)
    cumulative = 0.0
    for option, prob in zip(options, probs):
        cumulative += prob
        if threshold < cumulative:
            return option
    return options[-1]  # threshold == sum(probs) only through float rounding


def _randn_like(img: torch.Tensor, generator: torch.Generator, channels: int) -> torch.Tensor:
    b, _, h, w = img.shape
    noise = torch.randn((b, channels, h, w), generator=generator, device=generator.device)
    return noise.to(img.device, img.dtype)


# --------------------------------------------------------------------------------------------------
# Kernels and filtering.
# --------------------------------------------------------------------------------------------------


def gaussian_family_kernel(
    size: int,
    sigma_x: float,
    sigma_y: float | None = None,
    theta: float = 0.0,
    shape: str = "gaussian",
    beta: float = 1.0,
) -> torch.Tensor:
    """(size, size) float64 kernel summing to 1, centred, built on the quadratic form q = x^T S^-1 x.

    S = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T (sigma_y=None: isotropic). `shape`:
    "gaussian" exp(-q/2); "generalized" exp(-q^beta/2); "plateau" 1 / (1 + q^beta).
    """
    if size % 2 != 1:
        raise DegradationError(f"kernel size must be odd, got {size}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    axis = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    cos, sin = math.cos(theta), math.sin(theta)
    # Rotate the grid into the kernel's principal axes, where S is diagonal.
    u = cos * x + sin * y
    v = -sin * x + cos * y
    q = (u / sigma_x) ** 2 + (v / sigma_y) ** 2
    if shape == "gaussian":
        kernel = torch.exp(-0.5 * q)
    elif shape == "generalized":
        kernel = torch.exp(-0.5 * q**beta)
    elif shape == "plateau":
        kernel = 1.0 / (q**beta + 1.0)
    else:
        raise DegradationError(f"unknown kernel shape {shape!r}")
    return kernel / kernel.sum()


def sinc_kernel(size: int, omega_c: float) -> torch.Tensor:
    """(size, size) float64 circular low-pass (2-D sinc) kernel with cut-off `omega_c` radians, sum 1.

    k(r) = omega_c * J1(omega_c * r) / (2 pi r), k(0) = omega_c^2 / (4 pi): it adds ringing and
    overshoot artefacts, as sharpening and resampling in real pipelines do.
    """
    if size % 2 != 1:
        raise DegradationError(f"kernel size must be odd, got {size}")
    axis = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    r = torch.sqrt(x**2 + y**2)
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    kernel = omega_c * torch.special.bessel_j1(omega_c * safe_r) / (2 * math.pi * safe_r)
    kernel = torch.where(r == 0, torch.full_like(r, omega_c**2 / (4 * math.pi)), kernel)
    return kernel / kernel.sum()


def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of (B, C, H, W) `img` with one (k, k) kernel, keeping the size."""
    b, c, h, w = img.shape
    pad = kernel.shape[-1] // 2
    # Reflect padding needs more pixels than the pad; tiny intermediates (a small crop downscaled by
    # 0.15) are padded by repeating the edge instead.
    mode = "reflect" if min(h, w) > pad else "replicate"
    padded = F.pad(img.reshape(b * c, 1, h, w), (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(img.device, img.dtype)[None, None]
    return F.conv2d(padded, weight).reshape(b, c, h, w)


# --------------------------------------------------------------------------------------------------
# Resizing, noise, JPEG.
# --------------------------------------------------------------------------------------------------


def resize(img: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    """Resize to `size` = (height, width) with torch's "area", "bilinear" or "bicubic" interpolation."""
    if mode not in RESIZE_MODES:
        raise DegradationError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if mode == "area":
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode=mode, align_corners=False, antialias=antialias)


def gaussian_noise(img: torch.Tensor, sigma: float, generator: torch.Generator, gray: bool = False) -> torch.Tensor:
    """Noise of standard deviation `sigma`/255 (grey: one draw shared by the three channels)."""
    noise = _randn_like(img, generator, 1 if gray else img.shape[1])
    return noise.expand_as(img) * (sigma / 255.0)


def poisson_noise(img: torch.Tensor, scale: float, generator: torch.Generator, gray: bool = False) -> torch.Tensor:
    """Shot noise as Real-ESRGAN draws it, times `scale`; one image per call (its value count sets the rate).

    The photon count per level is 2^ceil(log2(number of distinct 8-bit values in the image)).
    Grey noise is drawn on the BT.601 luma and shared by the three channels.
    """
    if img.shape[0] != 1:
        raise DegradationError("poisson_noise takes one image at a time")
    source = img
    if gray:
        weights = torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        source = (img * weights).sum(dim=1, keepdim=True)
    levels = torch.clamp((source * 255.0).round(), 0, 255) / 255.0
    distinct = len(torch.unique(levels))
    photons = 2.0 ** math.ceil(math.log2(max(distinct, 1)))
    rate = (levels * photons).to(generator.device)
    counts = torch.poisson(rate, generator=generator).to(img.device, img.dtype)
    return ((counts / photons - levels) * scale).expand_as(img)


def jpeg(img: torch.Tensor, quality: float, backend: str) -> torch.Tensor:
    """JPEG-compress and decode every image at `quality` (1..100) with "kornia" or "libjpeg" (Pillow)."""
    img = img.clamp(0, 1)  # out-of-range values would wrap or ring in the codec
    if backend == "kornia":
        return _jpeg_kornia(img, quality)
    if backend == "libjpeg":
        return _jpeg_libjpeg(img, quality)
    raise DegradationError(f"unknown JPEG backend {backend!r}; expected one of {JPEG_BACKENDS}")


def _jpeg_kornia(img: torch.Tensor, quality: float) -> torch.Tensor:
    try:
        from kornia.enhance import jpeg_codec_differentiable
    except ImportError as error:
        raise MissingDependency(
            "the 'kornia' JPEG backend needs kornia >= 0.7.2 (kornia.enhance.jpeg_codec_differentiable) "
            "(ComfyUI installs kornia; `pip install -U kornia`), or choose jpeg_backend='libjpeg'"
        ) from error
    h, w = img.shape[-2:]
    # JPEG works on 16x16 macroblocks (8x8 blocks of 2x-subsampled chroma); libjpeg repeats the edge.
    padded = F.pad(img.float(), (0, (-w) % 16, 0, (-h) % 16), mode="replicate")
    qualities = torch.full((img.shape[0],), float(quality), device=img.device, dtype=torch.float32)
    coded = jpeg_codec_differentiable(padded, qualities)
    return coded[..., :h, :w].clamp(0, 1).to(img.dtype)


def _jpeg_libjpeg(img: torch.Tensor, quality: float) -> torch.Tensor:
    from PIL import Image

    pixels = (img * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(round(quality)))
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return out.to(img.device, img.dtype) / 255.0


def quantize_8bit(img: torch.Tensor) -> torch.Tensor:
    """Clip to 0..1 and round to the 256 levels of an 8-bit image."""
    return torch.clamp((img * 255.0).round(), 0, 255) / 255.0


def _check_images(hq: torch.Tensor, multiple: int) -> None:
    from ..pipelines.image import check_bchw

    check_bchw(hq, "the photos to degrade", allow_empty=True, error=DegradationError)
    h, w = hq.shape[-2:]
    if h % multiple or w % multiple:
        raise DegradationError(f"height and width must be multiples of {multiple}, got {h}x{w}")


# --------------------------------------------------------------------------------------------------
# The paper's five evaluation mixtures (Table 1).
# --------------------------------------------------------------------------------------------------

EVAL_BLUR_KERNEL_SIZE = 21
SR_FACTOR = 4

_BLUR2 = Op("blur", {"sigma": 2.0, "kernel_size": EVAL_BLUR_KERNEL_SIZE})
_SR4 = Op("downscale", {"factor": SR_FACTOR, "mode": "bicubic"})
_NOISE40 = Op("noise", {"sigma": 40.0})
_NOISE20 = Op("noise", {"sigma": 20.0})
_JPEG50 = Op("jpeg", {"quality": 50})

# Rows of Table 1, in its order; operations are applied left to right (blur -> downscale -> noise -> JPEG).
PRESETS: dict[str, tuple[Op, ...]] = {
    "blur2_sr4": (_BLUR2, _SR4),
    "noise40_sr4": (_SR4, _NOISE40),
    "blur2_noise40": (_BLUR2, _NOISE40),
    "blur2_noise40_sr4": (_BLUR2, _SR4, _NOISE40),
    "blur2_noise20_sr4_jpeg50": (_BLUR2, _SR4, _NOISE20, _JPEG50),
}


def _op_blur(img, generator, *, sigma: float, kernel_size: int, jpeg_backend: str):
    kernel = gaussian_family_kernel(kernel_size, sigma)
    return filter2d(img, kernel), Op("blur", {"sigma": sigma, "kernel_size": kernel.shape[-1]})


def _op_downscale(img, generator, *, factor: int, mode: str, jpeg_backend: str):
    h, w = img.shape[-2:]
    out = resize(img, (h // factor, w // factor), mode, antialias=True)
    return out, Op("downscale", {"factor": h // out.shape[-2], "mode": mode})


def _op_noise(img, generator, *, sigma: float, jpeg_backend: str):
    out = (img + gaussian_noise(img, sigma, generator)).clamp(0, 1)
    return out, Op("noise", {"sigma": sigma})


def _op_jpeg(img, generator, *, quality: float, jpeg_backend: str):
    return jpeg(img, quality, jpeg_backend), Op("jpeg", {"quality": quality})


_OPERATIONS: dict[str, Callable] = {
    "blur": _op_blur,
    "downscale": _op_downscale,
    "noise": _op_noise,
    "jpeg": _op_jpeg,
}


def apply_operations(
    hq: torch.Tensor,
    ops: Sequence[Op],
    generator: torch.Generator,
    *,
    quantize: bool = True,
    jpeg_backend: str = "libjpeg",
    trace: list[Op] | None = None,
) -> torch.Tensor:
    """Apply `ops` in order to a (B, 3, H, W) batch (noise is drawn independently per item).

    Each applied operation appends an `Op` with the parameters it used to `trace` (if given).
    """
    _check_images(hq, 1)
    img = hq.float()
    for op in ops:
        if op.name not in _OPERATIONS:
            raise DegradationError(f"unknown operation {op.name!r}; known: {sorted(_OPERATIONS)}")
        img, applied = _OPERATIONS[op.name](img, generator, jpeg_backend=jpeg_backend, **op.params)
        if trace is not None:
            trace.append(applied)
    return quantize_8bit(img) if quantize else img


def _upsample_back(lq: torch.Tensor, size: tuple[int, int], trace: list[Op] | None) -> torch.Tensor:
    if tuple(lq.shape[-2:]) == tuple(size):
        return lq
    out = resize(lq, size, "bicubic").clamp(0, 1)
    if trace is not None:
        trace.append(Op("upsample", {"factor": size[0] // lq.shape[-2], "mode": "bicubic"}))
    return out


def apply_preset(
    name: str,
    hq: torch.Tensor,
    generator: torch.Generator,
    resize_back: bool = False,
    *,
    jpeg_backend: str = "libjpeg",
    trace: list[Op] | None = None,
) -> torch.Tensor:
    """Degrade a (B, 3, H, W) 0..1 batch with one of `PRESETS`; the LQ is on the 8-bit grid.

    SR presets give (B, 3, H/4, W/4), or (B, 3, H, W) with `resize_back` (bicubic upsampling of the
    8-bit LQ, recorded in `trace` as an "upsample" Op).
    """
    if name not in PRESETS:
        raise DegradationError(f"unknown degradation preset {name!r}; known: {list(PRESETS)}")
    _check_images(hq, SR_FACTOR)
    lq = apply_operations(hq, PRESETS[name], generator, jpeg_backend=jpeg_backend, trace=trace)
    if resize_back:
        lq = _upsample_back(lq, tuple(hq.shape[-2:]), trace)
    return lq


# --------------------------------------------------------------------------------------------------
# Real-ESRGAN's second-order degradation (training).
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DegradationRound:
    """The random ranges of one Real-ESRGAN round (defaults: the first round of train_realesrnet_x4plus)."""

    blur_prob: float = 1.0
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)  # generalized Gaussian shape
    betap_range: tuple[float, float] = (1.0, 2.0)  # plateau shape
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_range: tuple[float, float] = (1.0, 30.0)  # sigma on the 0..255 scale
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)


SECOND_ROUND = DegradationRound(
    blur_prob=0.8,
    blur_sigma=(0.2, 1.5),
    resize_prob=(0.3, 0.4, 0.3),
    resize_range=(0.3, 1.2),
    noise_range=(1.0, 25.0),
    poisson_scale_range=(0.05, 2.5),
)


@dataclass(frozen=True)
class RealESRGANConfig:
    """Real-ESRGAN's degradation settings (public options/train_realesrnet_x4plus.yml and its dataset code)."""

    first: DegradationRound = DegradationRound()
    second: DegradationRound = SECOND_ROUND
    final_sinc_prob: float = 0.8
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    jpeg_backend: str = "kornia"


class RealESRGANDegradation:
    """Real-ESRGAN's random second-order degradation: `(B, 3, H, W)` HQ in 0..1 -> LQ in 0..1.

    The LQ is (B, 3, H/scale, W/scale) on the 8-bit grid, or with `resize_back` bicubically upsampled
    to (B, 3, H, W) (as DiffBIR-style training feeds it). Each batch item draws its own parameters.
    """

    def __init__(self, config: RealESRGANConfig = RealESRGANConfig(), scale: int = 4, resize_back: bool = False):
        if config.jpeg_backend not in JPEG_BACKENDS:
            raise DegradationError(f"unknown JPEG backend {config.jpeg_backend!r}; expected one of {JPEG_BACKENDS}")
        if scale < 1:
            raise DegradationError(f"scale must be a positive integer, got {scale}")
        for rnd in (config.first, config.second):
            unknown = set(rnd.kernel_types) - set(KERNEL_TYPES)
            if unknown or len(rnd.kernel_types) != len(rnd.kernel_probs):
                raise DegradationError(
                    f"kernel_types must be among {KERNEL_TYPES} with one probability each, got "
                    f"{rnd.kernel_types} / {rnd.kernel_probs}"
                )
        if set(config.resize_modes) - set(RESIZE_MODES):
            raise DegradationError(f"resize_modes must be among {RESIZE_MODES}, got {config.resize_modes}")
        self.config = config
        self.scale = int(scale)
        self.resize_back = resize_back

    def __call__(
        self, hq: torch.Tensor, generator: torch.Generator, trace: list[list[Op]] | None = None
    ) -> torch.Tensor:
        """Degrade a batch; `trace` (if given) receives, per item, the `Op`s applied with their drawn parameters."""
        _check_images(hq, self.scale)
        items = []
        for index in range(hq.shape[0]):
            item_trace: list[Op] = []
            items.append(self._degrade_one(hq[index : index + 1].float(), generator, item_trace))
            if trace is not None:
                trace.append(item_trace)
        lq = torch.cat(items)
        if self.resize_back:
            lq = _upsample_back(lq, tuple(hq.shape[-2:]), None)
        return lq

    def _degrade_one(self, img: torch.Tensor, generator: torch.Generator, trace: list[Op]) -> torch.Tensor:
        cfg = self.config
        h, w = img.shape[-2:]
        lq_h, lq_w = h // self.scale, w // self.scale
        img = self._round(img, cfg.first, (h, w), generator, trace)
        img = self._jpeg(img, cfg.first, generator, trace)
        img = self._round(img, cfg.second, (lq_h, lq_w), generator, trace)
        # Real-ESRGAN: other orders (sinc, JPEG, resize) "introduce twisted lines".
        if _rand(generator) < 0.5:
            img = self._resize_and_sinc(img, (lq_h, lq_w), generator, trace)
            img = self._jpeg(img, cfg.second, generator, trace)
        else:
            img = self._jpeg(img, cfg.second, generator, trace)
            img = self._resize_and_sinc(img, (lq_h, lq_w), generator, trace)
        return quantize_8bit(img)

    def _round(self, img, rnd: DegradationRound, base_size, generator, trace) -> torch.Tensor:
        """Blur (with `blur_prob`), resize relative to `base_size`, add noise."""
        if _rand(generator) < rnd.blur_prob:
            kernel, op = self._random_kernel(rnd, generator)
            img = filter2d(img, kernel)
            trace.append(op)
        img = self._random_resize(img, rnd, base_size, generator, trace)
        return self._random_noise(img, rnd, generator, trace)

    def _random_kernel(self, rnd: DegradationRound, generator) -> tuple[torch.Tensor, Op]:
        size = _choice(generator, self.config.kernel_sizes)
        if _rand(generator) < rnd.sinc_prob:
            # Small kernels cannot hold a low cut-off's wide sinc: Real-ESRGAN limits them to >= pi/3.
            low = math.pi / 3 if size < 13 else math.pi / 5
            omega = _uniform(generator, low, math.pi)
            return sinc_kernel(size, omega), Op("blur", {"type": "sinc", "kernel_size": size, "omega_c": omega})
        kind = _choice(generator, rnd.kernel_types, rnd.kernel_probs)
        sigma_x = _uniform(generator, *rnd.blur_sigma)
        sigma_y, theta = sigma_x, 0.0
        if kind.endswith("aniso"):
            sigma_y = _uniform(generator, *rnd.blur_sigma)
            theta = _uniform(generator, -math.pi, math.pi)
        shape, beta = "gaussian", 1.0
        if kind.startswith("generalized") or kind.startswith("plateau"):
            shape = "generalized" if kind.startswith("generalized") else "plateau"
            low, high = rnd.betag_range if shape == "generalized" else rnd.betap_range
            # Half the draws below 1 (heavier tails), half above (flatter top), as Real-ESRGAN does.
            beta = _uniform(generator, low, 1.0) if _rand(generator) < 0.5 else _uniform(generator, 1.0, high)
        kernel = gaussian_family_kernel(size, sigma_x, sigma_y, theta, shape, beta)
        params = {"type": kind, "kernel_size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta}
        params["beta"] = beta
        return kernel, Op("blur", params)

    def _random_resize(self, img, rnd: DegradationRound, base_size, generator, trace) -> torch.Tensor:
        direction = _choice(generator, ("up", "down", "keep"), rnd.resize_prob)
        if direction == "up":
            factor = _uniform(generator, 1.0, rnd.resize_range[1])
        elif direction == "down":
            factor = _uniform(generator, rnd.resize_range[0], 1.0)
        else:
            factor = 1.0
        mode = _choice(generator, self.config.resize_modes)
        size = (int(base_size[0] * factor), int(base_size[1] * factor))
        out = resize(img, size, mode)
        out_size = tuple(out.shape[-2:])
        trace.append(Op("resize", {"direction": direction, "factor": factor, "mode": mode, "size": out_size}))
        return out

    def _random_noise(self, img, rnd: DegradationRound, generator, trace) -> torch.Tensor:
        gaussian = _rand(generator) < rnd.gaussian_noise_prob
        gray = _rand(generator) < rnd.gray_noise_prob
        if gaussian:
            sigma = _uniform(generator, *rnd.noise_range)
            noise = gaussian_noise(img, sigma, generator, gray)
            trace.append(Op("noise", {"type": "gaussian", "sigma": sigma, "gray": gray}))
        else:
            scale = _uniform(generator, *rnd.poisson_scale_range)
            noise = poisson_noise(img, scale, generator, gray)
            trace.append(Op("noise", {"type": "poisson", "scale": scale, "gray": gray}))
        return (img + noise).clamp(0, 1)

    def _jpeg(self, img, rnd: DegradationRound, generator, trace) -> torch.Tensor:
        quality = _uniform(generator, *rnd.jpeg_range)
        trace.append(Op("jpeg", {"quality": quality}))
        return jpeg(img, quality, self.config.jpeg_backend)

    def _resize_and_sinc(self, img, size, generator, trace) -> torch.Tensor:
        mode = _choice(generator, self.config.resize_modes)
        img = resize(img, size, mode)
        trace.append(Op("resize", {"direction": "to_lq", "mode": mode, "size": tuple(img.shape[-2:])}))
        if _rand(generator) < self.config.final_sinc_prob:
            kernel_size = _choice(generator, self.config.kernel_sizes)
            omega = _uniform(generator, math.pi / 3, math.pi)
            img = filter2d(img, sinc_kernel(kernel_size, omega))
            trace.append(Op("sinc", {"kernel_size": kernel_size, "omega_c": omega}))
        return img
