"""Typed configuration for every stage: model widths, patch geometry, training, scoring.

Everything that a user may want to change lives here rather than in code, and unknown keys are
rejected (a typo in a YAML file must not be silently ignored on a production line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sclvi.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderConfig(_Strict):
    """Channel widths of the main encoder (Table 5) and secondary encoder (Table 6).

    family `paper`: Table 5 as published (padded convs and pools, GroupNorm), evaluated patch by patch.
    family `dense`: no padding, total stride 4 and per-position normalisation, so one fully convolutional
    pass over a frame gives exactly every 32-px stride-4 patch code (conv5x5, pool2, conv5x5, pool2,
    conv3x3, conv3x3, then 1x1 convs with the Table 5 widths).
    """

    family: Literal["paper", "dense"] = "paper"
    norm: Literal["group", "batch", "position"] = Field(
        "group", description="group: GroupNorm (paper); batch: BatchNorm (folded at inference); position: per-pixel GroupNorm"
    )
    conv_widths: tuple[int, int, int, int, int, int] = Field(
        (96, 256, 384, 384, 256, 128),
        description="conv1..conv6 output channels of the main encoder; conv7 is embed_dim",
    )
    secondary_width: int = Field(128, description="conv1 of the secondary encoder")
    embed_dim: int = Field(64, ge=2)
    groups: int = Field(8, ge=1, description="GroupNorm groups (clipped to divide each width)")

    @model_validator(mode="after")
    def _check_norm(self) -> "EncoderConfig":
        if self.family == "dense" and self.norm == "group":
            raise ValueError("the dense family needs a per-position norm: encoder.norm batch or position")
        if self.family == "paper" and self.norm != "group":
            raise ValueError("the paper family uses GroupNorm (encoder.norm: group)")
        return self


class PreprocessConfig(_Strict):
    """What is done to a frame's gray levels before the encoder sees it (the bundle keeps it, so training,
    bank, calibration and the line all agree)."""

    photometric: Literal["none", "frame"] = Field(
        "none",
        description="none: the paper (subtract the training mean image); frame: first map each frame to one "
        "gray-level mean and spread, so exposure, lamp ageing and part-to-part brightness do not read as defects",
    )
    mean: Literal["image", "flat"] = Field(
        "image",
        description="what is subtracted: image = the training set's per-pixel mean image (Patch SVDD); flat = its "
        "mean gray level per channel. On an aligned part the per-pixel mean removes the part itself, leaving the "
        "pretext task little to locate patches by (tests/test_pretext.py measures it)",
    )


class GeometryConfig(_Strict):
    """What the model looks at and the two patch scales (the large scale is a 2x2 grid of small patches).

    Two ways to map a camera frame to the model input:
    - `frame` unset: any frame is resized to `image_size` x `image_size` (the paper's protocol; aspect lost);
    - `frame` set (the camera's [width, height]): only frames of that size are inspected (any other gets
      NOT_INSPECTED bad_frame, never a silent resize); the `roi` [x, y, width, height] is cut out at native
      resolution, times `scale`, aspect kept. Maps and defect boxes come back in camera pixels.
    """

    image_size: int = Field(256, ge=64, description="square input size when `frame` is unset")
    frame: tuple[int, int] | None = Field(
        None, description="[width, height] of the camera frames the model is trained on (None: any size, resized "
        "to image_size square)")
    roi: tuple[int, int, int, int] | None = Field(
        None, description="[x, y, width, height] of the inspected region in frame pixels (None: the whole frame)")
    scale: float = Field(1.0, gt=0, le=4, description="resize factor of the ROI (0.5: a 5 MP camera at half resolution)")
    small_patch: int = Field(32, description="main-encoder patch size (fixed by Table 5)")
    small_stride: int = Field(4, ge=1)
    large_stride: int = Field(16, ge=1)

    @property
    def large_patch(self) -> int:
        return 2 * self.small_patch

    @property
    def region(self) -> tuple[int, int, int, int] | None:
        """The ROI in frame pixels (the whole frame when only `frame` is given); None when frames are squashed."""
        if self.frame is None:
            return None
        return self.roi if self.roi is not None else (0, 0, self.frame[0], self.frame[1])

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        region = self.region
        if region is None:
            return self.image_size, self.image_size
        return round(region[3] * self.scale), round(region[2] * self.scale)

    def tiles(self, side: int) -> bool:
        """Does an input side of `side` px hold both patch scales with no pixel left over?"""
        return side >= self.large_patch and all(
            (side - patch) % stride == 0
            for patch, stride in ((self.small_patch, self.small_stride), (self.large_patch, self.large_stride)))

    def nearest_tiling(self, side: int) -> int:
        """The largest input side <= `side` that `tiles` (what an ROI should be shrunk to)."""
        while side > self.large_patch and not self.tiles(side):
            side -= 1
        return side

    @staticmethod
    def roi_side(input_side: int, scale: float, limit: int | None = None) -> int | None:
        """A side in frame pixels (at most `limit`) that `scale` maps onto exactly `input_side` px, None if none."""
        return next((r for r in (round(input_side / scale) + d for d in (0, -1, 1, -2, 2))
                     if round(r * scale) == input_side and (limit is None or r <= limit)), None)

    def describe(self) -> str:
        """One line for logs and preflight: what part of which frames the model sees, at what size."""
        h, w = self.input_hw
        if self.frame is None:
            return f"{w}x{h} px input (any frame resized to it)"
        return (f"roi {list(self.region)} of {self.frame[0]}x{self.frame[1]} frames at scale {self.scale:g} -> "
                f"{w}x{h} px input")

    @model_validator(mode="after")
    def _check(self) -> "GeometryConfig":
        if self.small_patch != 32:
            raise ValueError("small_patch must be 32: the main encoder (Table 5) maps 32x32 -> 1x1")
        # The 64-px codes reuse 32-px codes: quarter offsets (32 px) and the large stride must fall on
        # the small-stride grid, and both scales must tile the input exactly (no silent border loss).
        if self.small_patch % self.small_stride or self.large_stride % self.small_stride:
            raise ValueError("small_stride must divide 32 and large_stride")
        if self.roi is not None and self.frame is None:
            raise ValueError("an roi needs the camera frame size: set geometry.frame [width, height] too")
        if self.frame is not None:
            if min(self.frame) < 1:
                raise ValueError("geometry.frame must be [width, height] in pixels")
            x, y, w, h = self.region
            if x < 0 or y < 0 or w < 1 or h < 1 or x + w > self.frame[0] or y + h > self.frame[1]:
                raise ValueError(f"roi {list(self.region)} (x, y, width, height) does not lie inside the "
                                 f"{self.frame[0]}x{self.frame[1]} frame")
            ih, iw = self.input_hw
            bad = [(name, side, raw) for name, side, raw in (("width", iw, w), ("height", ih, h)) if not self.tiles(side)]
            if bad:
                hint = ", ".join(
                    f"{name} {raw} px -> {side} px at scale {self.scale:g}; nearest that fits: "
                    f"{self.nearest_tiling(side)} px (roi {name} {self.roi_side(self.nearest_tiling(side), self.scale)})"
                    for name, side, raw in bad)
                raise ValueError(
                    f"the roi at this scale is not tiled exactly by {self.small_patch}-px patches at stride "
                    f"{self.small_stride} and {self.large_patch}-px patches at stride {self.large_stride} "
                    f"(no border may be left uninspected): {hint}")
            return self
        for patch, stride in ((self.small_patch, self.small_stride), (self.large_patch, self.large_stride)):
            if (self.image_size - patch) % stride:
                raise ValueError(
                    f"image_size {self.image_size} is not covered by {patch}-px patches at stride {stride}: "
                    f"(image_size - {patch}) must be a multiple of {stride}"
                )
        return self


#: The synthetic defects train/defects.py can make; `train.defect_kinds` picks the ones a model trains on.
DefectKind = Literal["paste", "scar", "blob", "finish"]


class TrainConfig(_Strict):
    """Self-supervised training (section 3.1) with the patch-SVDD term (section 3.2)."""

    task: Literal["scl12", "jigsaw8", "none"] = Field(
        "scl12", description="scl12: the paper's 12-class task; jigsaw8: Patch SVDD 8-neighbour; none: no SSL"
    )
    steps: int = Field(
        3000, ge=1, description="training steps, the cosine schedule's length (35-70 min of a 2-core CPU for "
        "dense-lite, so fewer where max_minutes is set and would be passed; chosen on 3 seeds of both shared sets, "
        "README: Detection quality)"
    )
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    alpha: float = Field(1e-4, ge=0, description="weight of the patch-SVDD loss")
    spread_weight: float = Field(
        0.0, ge=0, description="weight of the anti-collapse term (code std hinge + decorrelation); 0 = the paper's loss"
    )
    defect_weight: float = Field(
        0.0, ge=0, description="weight of the synthetic-defect term (patch CutPaste: clean vs pasted / scar / blob, "
        "train/defects.py); 0 = the paper's loss"
    )
    defect_kinds: tuple[DefectKind, ...] = Field(
        ("paste", "scar", "blob"), min_length=1, description="synthetic defects the defect term trains on: paste "
        "(a piece of another patch), scar (a thin line), blob (a brightness stain), finish (a region whose fine "
        "grain is smoothed away or strengthened, as a different grind or coating finish)"
    )
    spread_target: float = Field(0.25, gt=0, description="per-dimension code std the anti-collapse hinge asks for")
    jitter_frac: float = Field(0.25, ge=0, le=0.5, description="max jitter of each grid cell, fraction of patch")
    gray_shift: float = Field(0.05, ge=0, description="max |gray shift| per patch, in normalised units")
    svdd_shift_frac: float = Field(1 / 32, ge=0, le=0.25, description="max shift of the SVDD twin, fraction of patch")
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning rate over the steps: constant, or cosine decay to 5 % of lr"
    )
    max_minutes: float = Field(
        0.0, ge=0, description="time budget of a training from scratch: after the first steps, a machine too slow to "
        "train every step within it trains fewer (the cosine schedule shortened to fit, logged and recorded in the "
        "bundle) instead of running for hours; 0 = every step whatever it takes (the paper). Product presets: 50, so "
        "`sclvi train` with no flags ends within the hour on a slow CPU box too"
    )
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1)
    threads: int = Field(0, ge=0, description="torch CPU threads, 0 = leave torch's default")
    holdout_frac: float = Field(
        0.1, ge=0, lt=1, description="training images kept out of the pretext task to measure held-out pretext accuracy"
    )
    eval_every: int = Field(50, ge=1, description="steps between held-out pretext evaluations")
    early_stop_patience: int = Field(
        0, ge=0, description="stop when the mean held-out pretext accuracy of this many evaluations has not gained "
        "early_stop_min_delta over the mean of as many before them (0 = never, the default: at 3000 steps a "
        "patience of 3 fired at step 350-700 on every measured run, while the held-out accuracy and the AUROC "
        "were still rising)"
    )
    early_stop_min_delta: float = Field(0.01, ge=0, description="gain of the windowed mean that counts as progress")

    @model_validator(mode="after")
    def _distinct_kinds(self) -> "TrainConfig":
        if len(set(self.defect_kinds)) != len(self.defect_kinds):
            raise ValueError(f"train.defect_kinds names a kind twice: {list(self.defect_kinds)}")
        return self


class ScoringConfig(_Strict):
    """Affinity-augmented fusion (section 3.3) and map fusion."""

    eta: int = Field(10, ge=1, description="nearest memory items fused per test patch")
    lam: float = Field(20.0, gt=0, description="clip of gamma_i = sum(d)/d_i")
    formula: Literal["paper", "authors"] = Field(
        "paper",
        description="paper: ||E(p) - sum beta_i p_i||; authors: sum w_i d_i (their released code)",
    )
    scale_fusion: Literal["product", "sum"] = "product"
    map_sigma: float = Field(
        0.0, ge=0, description="Gaussian smoothing (px) of the fused map before the image score; 0 = the paper (none)"
    )
    image_score: Literal["max", "top-patch"] = Field(
        "max", description="the image score from the fused map: max (the paper: its highest pixel), or top-patch: the "
        "mean of its highest pixels, as many as one small patch covers (32 x 32 of the model input), wherever they "
        "lie: a part that is off over a wide area (a texture's other finish) adds up instead of counting once; it "
        "dilutes a defect much smaller than a patch on a small input (README: Detection quality), so it is not a preset's default"
    )
    knn: Literal["auto", "numpy", "numba", "cuda", "faiss-ivf"] = Field(
        "auto", description="k-NN + affinity kernel: numpy (exact reference), numba (CPU), cuda (GPU-resident bank), "
        "faiss-ivf (approximate candidates, exact re-rank: unaligned parts at line rate; the `ann` extra); auto: cuda on "
        "a GPU (position windows included), else numba with a position window, faiss-ivf (when installed) for a search "
        "above AUTO_IVF_PAIRS, else numba"
    )
    ivf_nlist: int | None = Field(None, ge=1, description="faiss-ivf: clusters of the bank (None: 4 sqrt(bank))")
    ivf_nprobe: int = Field(8, ge=1, description="faiss-ivf: clusters searched per query (recall vs speed; 4: "
                            "~10 % faster, recall@10 0.90 vs 0.98 on the tiles)")
    position_window: int | Literal["auto"] | None = Field(
        "auto",
        description="aligned parts: search only bank codes within this many grid cells of the query; auto: the "
        "window the memory bank measured (bundle.json `alignment`), none when the part is not aligned",
    )
    gpu_bank_dtype: Literal["float32", "float16"] = Field("float32", description="bank storage on the GPU")
    query_block: int = Field(1024, ge=1, description="queries per k-NN block (memory bound)")

    @property
    def window(self) -> int | None:
        """The window the k-NN kernels use: `auto` not resolved against a bundle (see
        scorer.resolve_scoring) means no measured alignment, so the whole bank."""
        return None if self.position_window == "auto" else self.position_window

    @model_validator(mode="after")
    def _check_window(self) -> "ScoringConfig":
        if isinstance(self.position_window, int) and self.position_window < 0:
            raise ValueError("position_window must be >= 0 cells, auto or null")
        if self.knn == "faiss-ivf" and isinstance(self.position_window, int):
            raise ValueError("faiss-ivf searches the whole bank: use knn numba with a position window")
        return self


class BankConfig(_Strict):
    """How the memory bank is built from the training images' codes (section 3.3's memory items)."""

    coreset_ratio: float = Field(
        1.0, gt=0, le=1, description="keep this fraction of codes by greedy k-center selection (1 = all)"
    )
    projection_dim: int = Field(32, ge=0, description="random projection for the coreset selection (0 = none)")
    max_images: int | None = Field(None, ge=1, description="build the bank from a seeded subset of this many images")
    neighbourhood: int = Field(
        1, ge=1, le=9, description="memory items and query codes alike: each patch code averaged with its k x k grid "
        "neighbours of the same scale (PatchCore's local aggregation; odd k); 1 = the paper (each patch alone)")
    retrieve: int = Field(
        0, ge=0, description="search each frame's patches only among the memory items of its `retrieve` most similar "
        "training images (mean code per scale; SPADE's image-level k-NN): keeps one variant's texture from matching "
        "another's, and bounds the search; 0 = every image (the paper). Off (logged) for a coreset bank, which holds "
        "no whole images. The k-NN time is proportional to it: on an aligned part with a position window 10 "
        "searched as well as 50 at a third of the cost (quality-knn-modes-cpu-stride4.md)")
    level_norm: float = Field(
        0.0, ge=0, le=1, description="divide each frame's map by the leave-one-out score level of the bank images it "
        "retrieved (relative to the bank's median), to this power: a rare variant of good part (on magnetic_tile the "
        "smallest tiles) no longer scores high all over (core/levels.py). Measured at bank build on up to 256 bank "
        "images (one frame's scoring each); needs `retrieve`. 0 = off (the paper)")
    seed: int = 0

    @model_validator(mode="after")
    def _odd(self) -> "BankConfig":
        if self.neighbourhood % 2 == 0:
            raise ValueError("bank.neighbourhood must be odd (centred on the patch): 1, 3, 5, ...")
        return self


class Config(_Strict):
    preset: str = "paper"
    encoder: EncoderConfig = EncoderConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    geometry: GeometryConfig = GeometryConfig()
    train: TrainConfig = TrainConfig()
    scoring: ScoringConfig = ScoringConfig()
    bank: BankConfig = BankConfig()

    @model_validator(mode="after")
    def _dense_strides(self) -> "Config":
        g = self.geometry
        if self.encoder.family == "dense" and (g.small_stride % 4 or g.large_stride % 4):
            raise ValueError("the dense family computes codes at stride 4: geometry strides must be multiples of 4")
        return self


#: What the product presets add to the paper's method (the `paper` preset stays as published): each frame's
#: gray levels standardised, then the training set's mean gray level subtracted instead of its per-pixel mean
#: image (which removes an aligned part, leaving the pretext task little to locate patches by), the
#: synthetic-defect training term (train/defects.py), codes aggregated over 3 x 3 neighbouring patches (bank and
#: queries), each frame searched among its 50 nearest bank images (core/retrieval.py) and its map divided by the
#: square root of their leave-one-out score level (core/levels.py). Measured one by one in
#: `sclvi bench quality --improvements`. And a training time budget (train.max_minutes), which changes nothing on a
#: machine fast enough for every step.
PRODUCT: dict[str, Any] = {
    "preprocess": {"photometric": "frame", "mean": "flat"}, "train": {"defect_weight": 1.0, "max_minutes": 50.0},
    "bank": {"neighbourhood": 3, "retrieve": 50, "level_norm": 0.5},
}

#: The preset a user gets without naming one, on every machine (a CUDA box included: training runs on the CPU
#: either way, and `paper` lacks every product improvement above): the one the README's quality figures are for.
#: `dense` (the paper's widths) is level with it at twelve times the compute (benchmarks/reports/quality-families-quick.md).
DEFAULT_PRESET = "dense-lite"

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # Narrow widths for CPU boxes: ~22x fewer MACs per patch than the paper's widths.
    "lite": {
        **PRODUCT,
        "encoder": {"conv_widths": (24, 48, 64, 64, 64, 64), "secondary_width": 64, "groups": 8},
    },
    # Dense family: every patch code of a frame from one fully convolutional pass (see EncoderConfig).
    "dense": {**PRODUCT, "encoder": {"family": "dense", "norm": "batch"}},  # GPU-sized: the Table 5 widths
    "dense-lite": {  # CPU-sized
        **PRODUCT,
        "encoder": {"family": "dense", "norm": "batch", "conv_widths": (32, 64, 96, 96, 64, 64), "secondary_width": 64},
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(preset: str = "paper", overrides: dict[str, Any] | None = None) -> Config:
    """A preset's config with user overrides applied on top; errors name the bad key."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    data = deep_merge({"preset": preset, **PRESETS[preset]}, overrides or {})
    data["preset"] = preset
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML mapping from a file, or a ConfigError that names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return loaded


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    default_preset: str = DEFAULT_PRESET,
) -> Config:
    """A preset, then a YAML config file (its optional `preset:` key picks the base), then overrides;
    `default_preset` when neither names one."""
    extra = overrides or {}
    overrides = read_yaml(path, "config file") if path is not None else {}
    chosen = preset or overrides.pop("preset", None) or default_preset
    overrides.pop("preset", None)
    return build_config(chosen, deep_merge(overrides, extra))


def config_to_dict(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")


def config_from_dict(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    return "invalid config: " + describe_validation_error(exc)


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem, naming the key (unknown keys are usually typos)."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{where}' (check the spelling)")
        else:
            lines.append(f"config key '{where}': {err['msg']}")
    return "; ".join(lines)
