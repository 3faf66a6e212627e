"""The typed config: every section of params.yaml, its defaults and its checks (read by harness.params)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from harness.errors import ConfigError
from harness.section import Section
from harness.sweep_params import SweepConfig
from models.presets import PRESETS, preset_spec
from models.spec import ModelSpec, SpecError

# URI schemes of ray.storage_path: those pyarrow.fs.FileSystem.from_uri opens (pyarrow 25), as Ray Train does.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


class InputSize(Section):
    """A clip size: frames x height x width (pixels)."""

    frames: int = Field(8, ge=1)
    height: int = Field(256, ge=16)
    width: int = Field(128, ge=8)

    def label(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    @classmethod
    def parse(cls, text: str) -> InputSize:
        """Parse 'TxHxW' (frames x height x width), e.g. '8x256x128'."""
        try:
            frames, height, width = (int(x) for x in text.lower().split("x"))
            return cls(frames=frames, height=height, width=width)
        except (ValueError, ValidationError):
            raise ConfigError(
                f"input size {text!r}: expected TxHxW with T >= 1, H >= 16, W >= 8, e.g. 8x256x128"
            ) from None


# The paper's input (Liu et al., BMVC 2019): clips of 8 frames of 256 x 128 pixels.
PAPER_INPUT = InputSize(frames=8, height=256, width=128)

# np.random.seed (each training worker), and the samplers of Optuna and Ray Tune, take seeds from 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1


def _seed(value: int) -> int:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{value}: a seed is an integer from 0 to 2**32 - 1 = {MAX_SEED} (what numpy's seeding takes)")
    return value


Seed = Annotated[int, Field(strict=True), AfterValidator(_seed)]


class SourceParams(Section):
    """A raw dataset in its official layout (stage source@<name> checks it, prepare@<name> reads it)."""

    format: Literal["mars", "duke"]
    root: Path


class SyntheticParams(Section):
    """A synthetic dataset written in an official layout (stage synthesize@<name>)."""

    format: Literal["mars", "duke"]
    identities: int = Field(100, ge=2)
    test_identities: int | None = Field(None, ge=1, description="identities of the test split; null: half")
    cameras: int = Field(6, ge=2)
    tracklets_per_id: int = Field(6, ge=2)
    min_frames: int = Field(8, ge=1)
    max_frames: int = Field(24, ge=1)
    height: int = Field(128, ge=16)
    width: int = Field(64, ge=8)
    distractors: int = Field(4, ge=0)
    junk: int = Field(4, ge=0, description="MARS only: pid -1 tracklets")
    seed: Seed = 0


class DataConfig(Section):
    dataset: str = "mars"
    sources: dict[str, SourceParams] = {}
    prepare_workers: int = Field(0, ge=0, description="processes of the synthesize and prepare stages; 0 = in process")
    store: Literal["raw", "jpeg"] = Field(
        "raw", description="frame store prepare writes: raw pixels (fastest from page cache) or JPEG bytes "
                           "(about 10x smaller, decoded in loader workers; for NFS or nodes with little RAM)")
    prepared_root: Path = Path("data/prepared")
    frames: int = Field(8, ge=1)
    height: int = Field(256, ge=16)
    width: int = Field(128, ge=8)

    @property
    def input(self) -> InputSize:
        return InputSize(frames=self.frames, height=self.height, width=self.width)


SPEC_FIELDS = ("non_local", "stripes", "nl_window", "temporal_pool_after", "stem_relu", "head")


class ModelConfig(Section):
    """A preset plus optional overrides of its ModelSpec fields (null keeps the preset's)."""

    preset: Literal["baseline", "nvan", "ste_nvan"] = "ste_nvan"
    width: int = Field(64, ge=1)
    last_stride: Literal[1, 2] = 1
    non_local: list[int] | None = None
    stripes: list[int] | None = None
    nl_window: int | None = None
    temporal_pool_after: list[int] | None = None
    stem_relu: bool | None = Field(None, description="ReLU after the stem's BN (torchvision); the presets: false (the authors')")
    head: Literal["clip", "frame"] | None = Field(None, description="BNNeck on the clip or on each frame; null: the preset's")

    def spec(self, num_classes: int, preset_params: PresetParams | None = None) -> ModelSpec:
        """The ModelSpec of this section for `num_classes` identities; null fields come from `preset_params`."""
        fields = SPEC_FIELDS
        overrides = {k: getattr(self, k) for k in fields if getattr(self, k) is not None}
        if preset_params is not None:
            overrides = {k: getattr(preset_params, k) for k in fields if getattr(preset_params, k) is not None} | overrides
        return preset_spec(self.preset, num_classes, width=self.width, last_stride=self.last_stride, **overrides)


class PresetParams(Section):
    """Per-preset overrides (params `presets.<name>`): ModelSpec fields, applied where `model.*` is null,
    and `train`, a partial train section applied over `train.*` when this preset trains."""

    non_local: list[int] | None = None
    stripes: list[int] | None = None
    nl_window: int | None = None
    temporal_pool_after: list[int] | None = None
    stem_relu: bool | None = None
    head: Literal["clip", "frame"] | None = None
    train: dict[str, Any] = {}

    @field_validator("train")
    @classmethod
    def _train_keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(values) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown train keys {unknown}; use keys of the train section, e.g. epochs, weight_decay")
        return values


class CostConfig(Section):
    width: int = Field(64, ge=1, description="backbone width costed (64 = ResNet-50)")
    presets: list[Literal["baseline", "nvan", "ste_nvan"]] = ["baseline", "nvan", "ste_nvan"]
    inputs: list[InputSize] = [InputSize()]
    batch: int = Field(1, ge=1)
    num_classes: int = Field(625, ge=1)
    warmup: int = Field(2, ge=0)
    repeats: int = Field(10, ge=1)
    threads: int = Field(0, ge=0, description="torch threads for latency; 0 = all cores")
    measure: bool = True
    benchmark: bool = Field(True, description="also cost each preset as trained (model.width, data input)")


class TrainConfig(Section):
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(16, ge=2, description="clips per step over all workers: P identities x K tracklets")
    k: int = Field(4, ge=1, description="tracklets per identity in a batch (K)")
    sampler: Literal["chunk_random", "chunk_first", "segment_random", "segment_first", "evenly"] = "chunk_random"
    stride: int = Field(1, ge=1, description="frame stride of the `evenly` sampler")
    epoch: Literal["identities", "tracklets"] = Field(
        "identities", description="identities: one pass over the identities, K tracklets drawn with replacement "
                                  "(the authors'); tracklets: one pass over groups of K tracklets")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(5e-5, ge=0)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    scheduler: Literal["step", "cosine", "none"] = "step"
    step_size: int = Field(50, ge=1, description="epochs between lr drops (step)")
    gamma: float = Field(0.1, gt=0)
    triplet_weight: float = Field(1.0, ge=0)
    id_weight: float = Field(1.0, ge=0)
    amp: Literal["none", "bf16", "fp16"] = "none"
    tf32: bool = Field(False, description="allow TF32 in cuDNN convolutions and CUDA matmuls (Ampere and newer GPUs); "
                                          "false: true fp32, as the authors trained (harness.precision)")
    sync_bn: bool = False
    grad_accum: int = Field(1, ge=1, description="steps whose gradients are summed before an update")
    imagenet_init: Path | None = None
    loader_workers: int | None = Field(
        None, ge=0, description="DataLoader processes per training worker; null: ray.cpus_per_worker - 1 on GPU "
                                "(the rest feed the device), 0 on CPU (every core computes)")
    cpu_isa: Literal["avx2", "native"] = Field(
        "avx2", description="x86 CPU kernels of the training workers: avx2 pins them, so CPU training gives "
                            "the same numbers on AVX-512 machines too; native lets torch choose (faster there)")
    steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch; null = one pass of the P x K sampler")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept: the newest under eval.select last, the best "
                                                       "by eval.select_by under test; the latest is always kept")
    checkpoint_every: int | None = Field(
        None, ge=1, description="epochs between full checkpoints besides evaluation epochs; null: evaluation epochs only")
    log_checkpoint: bool = Field(False, description="log the reported epoch's checkpoint (the weights the scores are "
                                                  "of, eval.select) to MLflow as artifacts")

    @model_validator(mode="after")
    def _pk(self) -> TrainConfig:
        if self.batch_size % self.k:
            raise ValueError(
                f"train.batch_size = {self.batch_size} is not divisible into P identities x K = {self.k} "
                f"tracklets; use a multiple of train.k"
            )
        return self

    @property
    def p(self) -> int:
        return self.batch_size // self.k


class EvalConfig(Section):
    every: int = Field(2, ge=1, description="epochs between evaluations (the last epoch is always evaluated)")
    protocols: list[Literal["mars-official", "standard"]] = Field(["mars-official", "standard"], min_length=1)
    metric: Literal["cosine", "euclidean"] = "cosine"
    select: Literal["last", "test"] = Field(
        "last", description="the evaluation a run reports: last (the trained model; earlier evaluations only go into "
                            "its history) or test (the best by eval.select_by on the test set, as the authors' "
                            "train_NL.py: optimistic, as it chooses on the data it reports)")
    select_by: Literal["rank1", "map"] = Field("map", description="the metric eval.select test chooses by")
    sampler: Literal["chunk_first", "segment_first", "dense", "evenly"] = "chunk_first"
    batch_size: int = Field(8, ge=1, description="clips per inference forward: one per tracklet; dense packs the "
                                                 "clips of several tracklets")
    compile: bool = Field(False, description="torch.compile the BN-folded inference model at each evaluation")

    @property
    def primary(self) -> str:
        """The protocol a run is selected, ranked and plotted by: the first of eval.protocols."""
        return self.protocols[0]


class RayConfig(Section):
    address: str | None = Field(None, description="null starts a local Ray; 'auto' joins the cluster")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    gpus_per_worker: float = Field(1, ge=0)
    storage_path: str = Field("ray_results", min_length=1,
                              description="runs and checkpoints: a folder every node mounts, or a URI (s3://, gs://, ...)")
    max_failures: int = Field(0, ge=0)
    log_to_driver: bool = False

    @field_validator("storage_path")
    @classmethod
    def _storage_scheme(cls, value: str) -> str:
        scheme, sep, _ = value.partition("://")
        if sep and scheme.lower() not in STORAGE_SCHEMES:
            raise ValueError(f"ray.storage_path {value!r}: {scheme!r} is not a filesystem Ray Train can write to; "
                             f"use a folder every node mounts, or a URI with one of {list(STORAGE_SCHEMES)}")
        return value

    @model_validator(mode="after")
    def _whole_gpus(self) -> RayConfig:
        if self.use_gpu and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ValueError(
                f"ray.gpus_per_worker = {self.gpus_per_worker:g}: DDP training gives each worker a whole GPU (NCCL "
                f"fails when two ranks share one); use 1 (or a whole number), and more workers for more GPUs")
        if self.use_gpu and self.gpus_per_worker < 1:
            raise ValueError("ray.gpus_per_worker must be at least 1 with ray.use_gpu: true")
        return self


class MlflowConfig(Section):
    tracking_uri: str | None = Field(None, description="null: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db")
    experiment: str = Field("nvan-bench", min_length=1)


class ReportConfig(Section):
    out_dir: Path = Path("reports")
    dataset: str | None = Field(None, description="null: every dataset, each in its own row of panels")
    latest_per_label: bool = Field(True, description="keep only the newest run of each label per dataset")
    published: bool = Field(True, description="plot the paper's MARS numbers on panels of datasets named mars")
    cost_axis: Literal["gmacs", "gmacs_tracklet", "latency"] = Field(
        "gmacs", description="x axis: GMACs per clip, GMACs per test tracklet under eval.sampler, or latency "
                             "(ms per clip) measured on each run's training device (one row of panels per device)")
    draws: int = Field(2000, ge=1000, description="draws from each point's approximate sampling distribution behind "
                                                  "P(on the front)")


class Config(Section):
    seed: Seed = 0
    seeds: list[Seed] = Field(
        [0], min_length=1, description="the seeds `harness.train --all-seeds` (and so dvc repro) trains each preset with")
    synthetic: dict[str, SyntheticParams] = {}
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    presets: dict[Literal["baseline", "nvan", "ste_nvan"], PresetParams] = {}
    cost: CostConfig = CostConfig()
    mlflow: MlflowConfig = MlflowConfig()
    report: ReportConfig = ReportConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    ray: RayConfig = RayConfig()
    sweep: SweepConfig = SweepConfig()

    def spec(self, num_classes: int, preset: str | None = None) -> ModelSpec:
        """The ModelSpec of `preset` (default model.preset): preset, then presets.<name>, then model.*."""
        model = self.model if preset is None else self.model.model_copy(update={"preset": preset})
        return model.spec(num_classes, self.presets.get(model.preset))

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"{values}: each seed once (a repeated seed trains the same run twice)")
        return values

    @model_validator(mode="after")
    def _model_fits_input(self) -> Config:
        try:
            self.spec(num_classes=1).validate_input(self.data.frames, self.data.height, self.data.width)
        except SpecError as e:
            raise ValueError(f"model {self.model.preset!r} at data input {self.data.input.label()}: {e}")
        if self.train.p % self.ray.num_workers:
            raise ValueError(
                f"train.batch_size / train.k = {self.train.p} identities per step cannot be split evenly over "
                f"ray.num_workers = {self.ray.num_workers}; make it a multiple of the worker count"
            )
        if self.train.sync_bn and not self.ray.use_gpu:
            raise ValueError("train.sync_bn needs ray.use_gpu: true (SyncBatchNorm runs on GPUs only); set it false on CPU")
        if self.train.amp == "fp16" and not self.ray.use_gpu:
            raise ValueError("train.amp = 'fp16' needs ray.use_gpu: true; use 'bf16' or 'none' on CPU")
        if self.seed + self.sweep.most_seeds - 1 > MAX_SEED:
            key = "sweep.max_seeds" if self.sweep.adaptive else "sweep.seeds"
            raise ValueError(f"seed = {self.seed} with {key} = {self.sweep.most_seeds}: a sweep trains seeds seed, "
                             f"seed + 1, ..., which must stay <= 2**32 - 1 = {MAX_SEED}; lower seed")
        return self


__all__ = ["Config", "ConfigError", "InputSize", "PRESETS"]
