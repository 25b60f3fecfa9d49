"""The training loop: patches in, a validated checkpoint out.

Each epoch draws fresh random patches (:class:`~wsidet.train.dataset.PointDataset`), takes
optimiser steps on the method's loss (AMP on CUDA), then runs the current network over the
whole validation images, chooses the decoding threshold with the best F1 there and keeps the
weights if that F1 improved. Training stops after ``epochs``, after ``patience`` epochs without
improvement, or when the time budget is spent. The best weights carry their threshold; a
resumable state is written after every epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsidet.annotations.sources import Source, describe, normalise_sources
from wsidet.evaluation.evaluate import (
    Predictions,
    choose_threshold,
    evaluate_predictions,
    predict,
    write_pr_curve,
)
from wsidet.inference.detector import Detector, load_weights, resolve_device, weights_hash
from wsidet.inference.precision import autocast_dtype, check_precision, resolve_precision
from wsidet.methods.base import Method
from wsidet.output.files import atomic_path
from wsidet.slide.stain import StainStats, stain_stats
from wsidet.train.augment import Augment
from wsidet.train.checkpoint import git_commit, git_dirty, save_record, save_weights
from wsidet.train.dataset import PointDataset, collate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes
    ----------
    epochs : int
        Upper bound on epochs.
    samples_per_epoch : int
        Random patches per epoch.
    batch_size : int
    patch : int
        Patch edge (rounded up to the method's stride).
    lr : float
        Learning rate of the first epoch. With ``schedule="cosine"`` it follows a cosine down
        to ``lr / 50`` at ``epochs``, or at the epoch where ``max_minutes`` runs out when that
        comes first (see :func:`cosine_lr` and :func:`lr_horizon`); with ``"plateau"`` it is
        divided by ten after every ``plateau_wait`` validations without a better score
        (:func:`plateau_lr`), for training to convergence, when the epochs are not known.
    schedule : str
        ``"cosine"`` or ``"plateau"``.
    plateau_wait : int
        Validations without improvement before each tenfold decay (``"plateau"`` only); keep
        it below ``patience`` so a run anneals before it stops.
    ema : float
        Decay of an exponential moving average of the weights, updated after every step
        (e.g. 0.999); 0 turns it off. Validation, the saved weights and the monitored sets
        then use the average. For counting by an integral (FCRN), where AdamW's steps of about
        the learning rate in every weight make the count drift between epochs while the loss
        falls, the average steadies it.
    weight_decay : float
    optimizer : str
        ``"adamw"`` or ``"sgd"`` (Nesterov momentum 0.9, as MicroNet's paper).
    patience : int
        Stop after this many validations without a better F1.
    seed : int
    device : str, optional
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16``, as for inference
        (:mod:`wsidet.inference.precision`); fp16 uses a gradient scaler. On a CPU the
        network trains in channels-last layout.
    augment : Augment
    radius : float
        Matching radius for validation F1 (pixels at the method's scale).
    max_minutes : float, optional
        Stop once the run has trained this long, counting every session of a resumed run:
        checked between steps (the first epoch too), leaving time for the epoch's validation
        as long as the last one took; the learning rate anneals by the time it runs out.
    select_on : str
        What "better on validation" means: ``"f1"`` (detection, the default) or ``"count"``
        (lower mean absolute count error, for counting with FCRN's density integral).
    stain_normalise : bool
        Train (and validate) on colours normalised to the training data's stain reference,
        each image from its own statistics (:func:`~wsidet.annotations.sources.normalise_sources`);
        the weights then ask inference to normalise too (:func:`wsidet.weights.normalises_stain`).
    """

    epochs: int = 100
    samples_per_epoch: int = 512
    batch_size: int = 8
    patch: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    patience: int = 15
    seed: int = 0
    device: str | None = None
    precision: str = "auto"
    augment: Augment = field(default_factory=Augment)
    radius: float = 6.0
    max_minutes: float | None = None
    select_on: str = "f1"
    stain_normalise: bool = False
    schedule: str = "cosine"
    plateau_wait: int = 4
    ema: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in {"adamw", "sgd"}:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in {"cosine", "plateau"}:
            raise ValueError(f"schedule must be 'cosine' or 'plateau', got {self.schedule!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.plateau_wait < 1:
            raise ValueError(f"plateau_wait must be >= 1, got {self.plateau_wait}")
        if self.schedule == "plateau" and self.plateau_wait >= self.patience:
            raise ValueError(
                f"plateau_wait ({self.plateau_wait}) must be below patience "
                f"({self.patience}), or the run stops before its rate ever drops"
            )
        if self.select_on not in {"f1", "count"}:
            raise ValueError(f"select_on must be 'f1' or 'count', got {self.select_on!r}")
        if min(self.epochs, self.samples_per_epoch, self.batch_size, self.patience) < 1:
            raise ValueError("epochs, samples_per_epoch, batch_size and patience must be >= 1")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        check_precision(self.precision)


@dataclass(frozen=True)
class EpochLog:
    """What happened in one epoch."""

    epoch: int
    loss: float
    val_f1: float
    val_precision: float
    val_recall: float
    val_count_mae: float
    threshold: float
    seconds: float
    improved: bool
    # Defaulted so that the histories of states written before it was recorded still load.
    lr: float = math.nan
    #: Learning-curve figures of the monitored sets (``train(monitor=...)``), by set name:
    #: ``f1``, ``count_mae`` and ``count_bias`` (mean predicted minus true count) at this
    #: epoch's validation threshold. Never used to select weights or thresholds.
    monitor: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Seconds spent on the monitored sets, not counted in ``seconds`` (nor in a time budget).
    monitor_seconds: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """The outcome of a training run."""

    method: Method
    weights: Path
    record: Path
    best_epoch: int
    best_score: float
    history: list[EpochLog]


def lr_horizon(config: TrainConfig, epoch_seconds: list[float]) -> int:
    """The epoch at which the learning-rate cosine should reach its floor.

    ``config.epochs``, or, under a time budget, the number of epochs the budget buys at the
    mean pace so far, whichever is smaller: a run stopped by its budget has then annealed
    instead of stopping at full learning rate. Computed from the epoch log alone, so a
    resumed run (on a slower or faster machine) re-plans from where it stands.

    Parameters
    ----------
    config : TrainConfig
    epoch_seconds : list of float, shape (n_epochs_done,)
        Seconds each finished epoch took, over every session of the run.

    Returns
    -------
    int
        At least ``len(epoch_seconds) + 1``, at most ``config.epochs``.
    """
    if config.max_minutes is None or not epoch_seconds:
        return config.epochs
    pace = sum(epoch_seconds) / len(epoch_seconds)
    affordable = math.ceil(config.max_minutes * 60 / max(pace, 1e-9))
    return max(len(epoch_seconds) + 1, min(config.epochs, affordable))


#: The cosine ends at ``lr / LR_FLOOR``.
LR_FLOOR = 50.0


def cosine_lr(epoch: float, epochs: int, lr: float) -> float:
    """Learning rate at ``epoch``: a cosine from ``lr`` at 0 to ``lr / 50`` at ``epochs``.

    ``epoch`` may have a fraction (the steps done of the current epoch). A function of the
    epoch and the horizon only (no scheduler state), so a run resumed with a larger ``epochs``
    follows the new horizon from where it stands, as if it had been started with it.
    """
    floor = lr / LR_FLOOR
    progress = min(1.0, epoch / epochs)
    return floor + (lr - floor) * (1 + math.cos(math.pi * progress)) / 2


#: Each plateau divides the learning rate by this.
PLATEAU_FACTOR = 10.0


def plateau_lr(improved: Sequence[bool], lr: float, wait: int) -> float:
    """Learning rate after validations whose improvements are ``improved``.

    Divided by :data:`PLATEAU_FACTOR` each time ``wait`` validations in a row have not
    improved (the count restarts after a decay and after an improvement), as the step decays of
    FCRN's and MicroNet's papers, but on the validation score rather than a fixed epoch. A
    function of the epoch log alone, so a resumed run continues at the same rate.

    Parameters
    ----------
    improved : sequence of bool, shape (n_epochs_done,)
    lr : float
        The starting rate.
    wait : int
    """
    decays, stale = 0, 0
    for better in improved:
        stale = 0 if better else stale + 1
        if stale == wait:
            decays, stale = decays + 1, 0
    return lr / PLATEAU_FACTOR**decays


def step_lr(
    config: TrainConfig,
    epoch: float,
    trained_seconds: float,
    epoch_seconds: list[float],
    improved: Sequence[bool] = (),
) -> float:
    """Learning rate of a step: the cosine where the epochs or the time budget have got to.

    Without a budget the rate changes per epoch. With one, whichever of the epochs (with the
    fraction of the current one) and the time is further along sets the position, so a run
    stopped by its budget, even within its first epoch, ends annealed.

    Parameters
    ----------
    config : TrainConfig
    epoch : float
        Epochs done, with the fraction of the current one.
    trained_seconds : float
        Training time so far, every session of the run included.
    epoch_seconds : list of float
        Seconds each finished epoch took (for :func:`lr_horizon`).
    improved : sequence of bool
        Whether each finished epoch improved the validation score (``"plateau"``).
    """
    if config.schedule == "plateau":
        return plateau_lr(improved, config.lr, config.plateau_wait)
    horizon = lr_horizon(config, epoch_seconds)
    if config.max_minutes is None:
        # Constant within an epoch: a run resumed with a larger ``epochs`` then trains
        # exactly as one started with it (the horizon only moves the epochs still to come).
        return cosine_lr(math.floor(epoch), horizon, config.lr)
    position = max(epoch, horizon * trained_seconds / (config.max_minutes * 60))
    return cosine_lr(position, horizon, config.lr)


def training_stain_reference(sources: Sequence[Source], edge: int = 512) -> StainStats:
    """Stain statistics of training data: the central ``edge``-pixel window of each source."""
    crops = []
    for source in sources:
        h, w = source.shape
        y0, x0 = max(0, (h - edge) // 2), max(0, (w - edge) // 2)
        crops.append(source.read(y0, min(h, y0 + edge), x0, min(w, x0 + edge)))
    try:
        return stain_stats(crops)
    except ValueError:  # no stained pixel (e.g. fluorescence on black): record an identity
        return StainStats((50.0, 0.0, 0.0), (1.0, 1.0, 1.0), 0)


def monitor_figures(method: Method, predictions: Predictions, radius: float) -> dict[str, float]:
    """F1, count MAE and count bias (mean signed error) of one monitored set."""
    result = evaluate_predictions(method, predictions, radius=radius)
    signed = [row["count"] - row["true"] for row in result.per_image]
    return {
        "f1": result.scores.f1,
        "count_mae": result.count_mae,
        "count_bias": float(np.mean(signed)) if signed else math.nan,
    }


def _seed_everything(seed: int) -> None:
    # Patches draw from their own (seed, epoch, index) generators; this covers weight
    # initialisation and anything else that uses the global generators.
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    method: Method,
    train_sources: Sequence[Source],
    val_sources: Sequence[Source],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    init_weights: str | Path | None = None,
    allow_pickle: bool = False,
    on_epoch: Callable[[EpochLog], None] | None = None,
    data_record: dict[str, Any] | None = None,
    train_weights: Sequence[float] | None = None,
    monitor: Mapping[str, Sequence[Source]] | None = None,
) -> TrainResult:
    """Train ``method`` and write its best checkpoint to ``out_dir``.

    Parameters
    ----------
    method : Method
        A trainable method (its parameters define the network and the targets).
    train_sources, val_sources : sequence of Source
        Training and validation images (validation is used for early stopping and to choose
        the decoding threshold; never for gradients).
    config : TrainConfig
    out_dir : path
        Receives ``NAME.safetensors`` (best weights), ``NAME.json`` (record),
        ``NAME-pr.png`` (validation precision-recall curve), ``state.pt`` (for resuming).
    resume : bool
        Continue from ``out_dir/state.pt``: weights, optimiser state, history and time spent
        are restored; the learning rate follows the cosine of this call's ``config.epochs``,
        and the time budget counts the epochs of the earlier sessions.
    init_weights : path, optional
        Start from these weights instead of a fresh initialisation (fine-tuning); they must
        belong to ``method`` (same network parameters).
    allow_pickle : bool
        Accept ``init_weights`` in a torch pickle file (loading one can run code).
    on_epoch : callable, optional
        Called with each epoch's :class:`EpochLog`.
    data_record : dict, optional
        Extra description of the data, stored in the record.
    train_weights : sequence of float, optional
        Probability of drawing each training source (default: by area); see
        :func:`wsidet.train.dataset.mixture_weights`.
    monitor : mapping of str to sequence of Source, optional
        Sets scored after every epoch for learning curves only (e.g. the training images, or a
        test set in a diagnosis): their figures go to :attr:`EpochLog.monitor`, never into the
        choice of weights or threshold, and their time is not charged to the budget.

    Returns
    -------
    TrainResult
    """
    if not method.trainable:
        raise ValueError(f"method {method.name!r} has nothing to train")
    if not val_sources:
        raise ValueError("training needs validation images (early stopping, threshold choice)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The code that trains is the code imported now, whatever the tree holds when training ends.
    provenance = {"git_commit": git_commit(), "git_dirty": git_dirty()}
    stats, train_sources = _stain(train_sources, config)
    model = _Model.build(method, config, init_weights, allow_pickle=allow_pickle)
    dataset = PointDataset(
        train_sources,
        method,
        patch=math.ceil(config.patch / method.stride) * method.stride,
        samples=config.samples_per_epoch,
        augment=config.augment,
        seed=config.seed,
        weights=train_weights,
    )
    run = _Run(method, config, out, stats, val_sources, monitor or {})
    if resume and run.state_path.is_file():
        run.restore(model)
    for epoch in range(run.start_epoch, config.epochs):
        if run.should_stop():
            break
        log = run.epoch(model, dataset, epoch)
        if on_epoch is not None:
            on_epoch(log)
        run.save_state(model, epoch)
    record = {
        **provenance,
        **run.record(),
        **_where(model, init_weights),
        # Summed over epochs so that a resumed run records its whole training time.
        "minutes": sum(h.seconds for h in run.history) / 60,
        "data": {"train": describe(train_sources), "validation": describe(val_sources)}
        | (data_record or {}),
        "history": [dataclasses.asdict(h) for h in run.history],
    }
    saved = save_record(record, out / f"{method.name}.json")
    return TrainResult(
        run.best_method, run.weights_path, saved, run.best_epoch, run.best_score, run.history
    )


def _stain(sources: Sequence[Source], config: TrainConfig) -> tuple[StainStats, Sequence[Source]]:
    """The training colours and the sources, normalised to them with ``stain_normalise``.

    The colours are the reference other slides are normalised to at inference.
    """
    stats = training_stain_reference(sources)
    if not config.stain_normalise:
        return stats, sources
    if stats.pixels == 0:
        raise ValueError("stain_normalise needs stained training images (none found)")
    return stats, normalise_sources(sources, stats)


def _where(model: _Model, init_weights: str | Path | None) -> dict[str, Any]:
    """Where training started from and ran, for the record."""
    return {
        "init_weights": (
            None
            if init_weights is None
            else {"path": str(init_weights), "hash": weights_hash(init_weights)}
        ),
        "device": str(model.device),
        "device_name": torch.cuda.get_device_name(model.device)
        if model.device.type == "cuda"
        else "cpu",
    }


@dataclass
class _Model:
    """The network being trained and what updates it, on its device."""

    network: torch.nn.Module
    averaged: Any  # torch.optim.swa_utils.AveragedModel with config.ema, else None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    layout: torch.memory_format

    @classmethod
    def build(
        cls,
        method: Method,
        config: TrainConfig,
        init_weights: str | Path | None,
        *,
        allow_pickle: bool,
    ) -> _Model:
        """A fresh (or ``init_weights``) network with its optimiser, scaler and average."""
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device)
        layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        _seed_everything(config.seed)
        network = method.build_network()
        if init_weights is not None:
            load_weights(network, init_weights, method, allow_pickle=allow_pickle)
        network = network.to(device, memory_format=layout)  # type: ignore[call-overload]
        averaged = None
        if config.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            averaged = AveragedModel(
                network,
                multi_avg_fn=get_ema_multi_avg_fn(config.ema),  # type: ignore[no-untyped-call]
                use_buffers=True,
            )
        params = [p for p in network.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        return cls(network, averaged, optimizer, scaler, device, precision, layout)

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights validated and saved: the average with EMA, else the network."""
        return self.network if self.averaged is None else self.averaged.module

    def step(
        self, method: Method, images: torch.Tensor, targets: dict[str, torch.Tensor], epoch: int
    ) -> float:
        """One optimiser step on a batch (of epoch ``epoch``, for the error); its loss."""
        dtype = autocast_dtype(self.precision)
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(
            device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        )
        with autocast:
            outputs = self.network(images)
        loss = method.loss({k: v.float() for k, v in outputs.items()}, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}")
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.averaged is not None:
            self.averaged.update_parameters(self.network)
        return float(loss.detach())


@dataclass
class _Run:
    """One training run's bookkeeping: history, best so far, budget, files."""

    method: Method
    config: TrainConfig
    out: Path
    stats: StainStats
    val_sources: Sequence[Source]
    monitor: Mapping[str, Sequence[Source]]
    history: list[EpochLog] = field(default_factory=list)
    best_score: float = -float("inf")
    best_epoch: int = -1
    best_method: Method = field(init=False)
    start_epoch: int = 0
    stale: int = 0  # validations since the best
    validation_seconds: float = 0.0  # the last validation's, reserved at the end of a budget
    out_of_time: bool = False

    def __post_init__(self) -> None:
        self.best_method = self.method

    @property
    def state_path(self) -> Path:
        """The resumable state, rewritten after every epoch."""
        return self.out / "state.pt"

    @property
    def weights_path(self) -> Path:
        """The best weights so far."""
        return self.out / f"{self.method.name}.safetensors"

    @property
    def budget(self) -> float | None:
        """Seconds of training allowed (None: no budget)."""
        return None if self.config.max_minutes is None else self.config.max_minutes * 60

    @property
    def val_stain(self) -> StainStats | None:
        """What validation images are normalised to (with ``stain_normalise``)."""
        return self.stats if self.config.stain_normalise else None

    def restore(self, model: _Model) -> None:
        """Continue from :attr:`state_path`: weights, optimiser, history, best so far."""
        state = torch.load(self.state_path, map_location=model.device, weights_only=True)
        model.network.load_state_dict(state["network"])
        if model.averaged is not None and state.get("ema"):
            model.averaged.load_state_dict(state["ema"])
        model.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # empty when AMP was off
            model.scaler.load_state_dict(state["scaler"])
        method = self.method
        self.start_epoch = int(state["epoch"]) + 1
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        threshold = float(state["best_threshold"])
        self.best_method = method.replace(**{method.threshold_param: threshold})
        self.history = [EpochLog(**h) for h in state["history"]]
        if self.history:
            improved = max(i for i, h in enumerate(self.history) if h.improved)
            self.stale = len(self.history) - 1 - improved
        logger.info("resuming at epoch %d (best F1 %.4f)", self.start_epoch, self.best_score)

    def should_stop(self) -> bool:
        """Patience or budget spent (checked before an epoch, so a stopped run stays stopped)."""
        if self.stale >= self.config.patience:
            logger.info("stopping: %d epochs without a better validation score", self.stale)
            return True
        spent = sum(h.seconds for h in self.history)
        if self.out_of_time or (self.budget is not None and spent >= self.budget):
            logger.info("stopping: time budget of %g minutes spent", self.config.max_minutes)
            return True
        return False

    def epoch(self, model: _Model, dataset: PointDataset, epoch: int) -> EpochLog:
        """Train one epoch, validate, score the monitored sets; the epoch's log."""
        epoch_start = time.perf_counter()
        lr, losses = self._fit(model, dataset, epoch, epoch_start)
        validation_start = time.perf_counter()
        detector = Detector(
            self.method, network=model.evaluated, device=str(model.device),
            precision=model.precision,
        )  # fmt: skip
        threshold, best_here, improved = self._validate(model, detector, epoch)
        self.validation_seconds = time.perf_counter() - validation_start
        monitor_start = time.perf_counter()
        method = self.method.replace(**{self.method.threshold_param: threshold})
        curves = {
            name: monitor_figures(
                method, predict(detector, sources, stain=self.val_stain), self.config.radius
            )
            for name, sources in self.monitor.items()
        }
        monitor_seconds = time.perf_counter() - monitor_start
        log = EpochLog(
            epoch=epoch,
            loss=float(np.mean(losses)) if losses else float("nan"),
            val_f1=best_here.scores.f1,
            val_precision=best_here.scores.precision,
            val_recall=best_here.scores.recall,
            val_count_mae=best_here.count_mae,
            threshold=threshold,
            seconds=time.perf_counter() - epoch_start - monitor_seconds,
            improved=improved,
            lr=lr,
            monitor=curves,
            monitor_seconds=monitor_seconds,
        )
        self.history.append(log)
        return log

    def _fit(
        self, model: _Model, dataset: PointDataset, epoch: int, epoch_start: float
    ) -> tuple[float, list[float]]:
        """Optimiser steps over one epoch's patches; the epoch's first rate and the losses."""
        config, budget = self.config, self.budget
        spent = sum(h.seconds for h in self.history)
        finished = [h.seconds for h in self.history]
        improvements = [h.improved for h in self.history]
        lr = step_lr(config, epoch, spent, finished, improvements)
        model.network.train()
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=False, collate_fn=collate
        )
        steps = max(1, len(loader))
        losses = []
        for step, (images, targets) in enumerate(loader):
            elapsed = time.perf_counter() - epoch_start
            if budget is not None and step and spent + elapsed + self.validation_seconds >= budget:
                self.out_of_time = True  # validate what was trained, then stop
                break
            for group in model.optimizer.param_groups:
                group["lr"] = step_lr(
                    config, epoch + step / steps, spent + elapsed, finished, improvements
                )
            losses.append(model.step(self.method, images, targets, epoch))
        return lr, losses

    def _validate(self, model: _Model, detector: Detector, epoch: int) -> tuple[float, Any, bool]:
        """Whole validation images: the threshold, its figures, whether they improved.

        Improved weights (and their precision-recall curve) are saved at once.
        """
        method, config = self.method, self.config
        predictions = predict(detector, self.val_sources, stain=self.val_stain)
        threshold, curve = choose_threshold(method, predictions, radius=config.radius)
        best_here = max(curve, key=lambda e: e.scores.f1)
        # The selection score: F1, or minus the count error (higher is better either way).
        score = best_here.scores.f1 if config.select_on == "f1" else -best_here.count_mae
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best_method = method.replace(**{method.threshold_param: threshold})
            save_weights(
                model.evaluated,
                self.best_method,
                self.weights_path,
                stain_reference=self.stats.as_dict(),
                stain_normalised=config.stain_normalise,
            )
            curves = {f"{method.name} (validation)": curve}
            write_pr_curve(curves, self.out / f"{method.name}-pr.png")
        else:
            self.stale += 1
        return threshold, best_here, improved

    def save_state(self, model: _Model, epoch: int) -> None:
        """Write the resumable state (atomic: a run killed meanwhile keeps the previous one)."""
        best = self.best_method
        with atomic_path(self.state_path, overwrite=True) as tmp:
            torch.save(
                {
                    "network": model.network.state_dict(),
                    "ema": model.averaged.state_dict() if model.averaged is not None else {},
                    "optimizer": model.optimizer.state_dict(),
                    "scaler": model.scaler.state_dict(),
                    "epoch": epoch,
                    "best_score": self.best_score,
                    "best_epoch": self.best_epoch,
                    "best_threshold": float(getattr(best, self.method.threshold_param)),
                    "history": [dataclasses.asdict(h) for h in self.history],
                },
                tmp,
            )

    def record(self) -> dict[str, Any]:
        """The run's part of the weights' JSON record."""
        best, config = self.best_method, self.config
        return {
            "method": best.name,
            "params": best.params(),
            "mpp": best.mpp,
            "normalisation": "RGB / 255; method-specific normalisation inside the network",
            "stain_reference": self.stats.as_dict(),
            "threshold": {best.threshold_param: getattr(best, best.threshold_param)},
            "best_epoch": self.best_epoch,
            "validation": {
                ("f1" if config.select_on == "f1" else "minus_count_mae"): self.best_score,
                "radius": config.radius,
            },
            "train": dataclasses.asdict(config),
        }
