"""The training loop: epochs, early stopping on validation WAUC, checkpoints, resume.

One :class:`Trainer` trains one model on one rank of a process group. Determinism: the data
order is a function of ``(seed, epoch)`` and the torch RNG is reseeded at each epoch from
``(seed, epoch, rank)``, so a run resumed after epoch ``e`` continues exactly as the
uninterrupted run would have.

The loss lives here, outside the model: ``loss_fn(logits, batch) -> scalar`` (default BCE).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchrec.optim.keyed import CombinedOptimizer
from tqdm.auto import tqdm

from mdctr.domains.batching import Batch, DatasetReader, prefetch
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.config import TrainConfig
from mdctr.platform.distributed import dense_optimizer, shard, table_param_names
from mdctr.platform.metrics import compute_metrics
from mdctr.platform.model import CTRModel, FeatureLayout

log = logging.getLogger("mdctr.train")

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def bce_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, batch.labels)


class Predictions(NamedTuple):
    logits: torch.Tensor  # float (N,)
    labels: torch.Tensor  # float (N,)
    domain: torch.Tensor  # int64 (N,), the reader's domain index
    example_id: torch.Tensor  # int64 (N,)


class Trainer:
    """Builds the sharded model and optimizers for one rank and runs the loop.

    Args:
        cfg: the run's config.
        reader: the dataset (tables sized to ``layout``).
        layout: feature layout of the model.
        ckpt_dir: where epoch checkpoints and ``state.json`` go.
        domains: train/evaluate only these domains (the ``separate`` baseline), else all.
        model: a pre-built (unsharded) model to use instead of ``CTRModel`` (e.g. with adapters).
        trainable: which dense parameter names the optimizer updates (default: all).
        domain_map: the model's domain index for each of the reader's (when the reader's
            dataset orders or names domains differently from the model's).
        group_domains: order each training batch's rows by domain (for per-domain modules).
        window: train and evaluate only rows with ``lo <= ts < hi`` (either end may be None).
        transform: applied to every batch on the data thread, before the model sees it
            (e.g. to join features looked up by id).
        train_split: the split trained on (``None``: every row of the selection, e.g. a
            time window that has no held-out part).
        keep_only: instead of checkpointing every epoch, keep the best epoch's copy of
            just the model entries whose names pass, in memory: for fine-tuning a few
            weights of a frozen model (no checkpoint files; the run cannot be resumed).

    With ``cfg.train.validation`` off, the trainer validates nothing and keeps the last epoch.
    """

    def __init__(self, cfg: TrainConfig, reader: DatasetReader, layout: FeatureLayout, ckpt_dir: Path, *,
                 rank: int = 0, world_size: int = 1, device: torch.device = torch.device("cpu"),
                 domains: list[str] | None = None, model: torch.nn.Module | None = None,
                 trainable: Callable[[str], bool] | None = None, loss_fn: LossFn = bce_loss,
                 domain_map: torch.Tensor | None = None, group_domains: bool = False, progress: bool = True,
                 window: tuple[int | None, int | None] | None = None,
                 transform: Callable[[Batch], Batch] | None = None, train_split: str | None = "train",
                 keep_only: Callable[[str], bool] | None = None):
        self.cfg, self.reader, self.layout = cfg, reader, layout
        self.keep_only = keep_only
        self._kept: dict[str, torch.Tensor] = {}  # keep_only: the best epoch's entries
        self.ckpt_dir = Path(ckpt_dir)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.domains = domains if domains is not None else cfg.train.domains
        self.domain_map = domain_map
        self.group_domains = group_domains
        self.loss_fn = loss_fn
        self.progress = progress and rank == 0
        self.batch_size = max(1, cfg.train.batch_size // world_size)
        self.eval_batch_size = max(1, cfg.train.eval_batch_size // world_size)
        torch.manual_seed(cfg.train.seed)
        base = model if model is not None else CTRModel(layout, cfg.model, seed=cfg.train.seed)
        self.model = shard(base, device=device, batch_size=self.batch_size, optim=cfg.optim.embedding)
        tables = table_param_names(self.model)
        keep = trainable or (lambda name: True)
        self.dense_params = {n: p for n, p in self.model.named_parameters()
                             if n not in tables and p.requires_grad and keep(n)}
        self.dense_opt = dense_optimizer(self.dense_params, cfg.optim.dense)
        self.optimizer = CombinedOptimizer([self.model.fused_optimizer, self.dense_opt])
        self.transform = transform
        self.validation = cfg.train.validation
        self.train_split = train_split
        self._rows: dict[str | None, int] = {}
        self._split_kw = dict(split_kind=cfg.train.split_kind, split_seed=cfg.train.split_seed, domains=self.domains,
                              ts_range=window)

    # -- data ----------------------------------------------------------------------------
    def _batches(self, split: str | None, epoch: int, *, train: bool):
        it = self.reader.batches(
            split, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
            seed=self.cfg.train.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
            drop_last=train and self.world_size > 1, group_domains=train and self.group_domains, **self._split_kw)
        return prefetch(self._transformed(it), self.cfg.train.prefetch)

    def _transformed(self, batches):
        return batches if self.transform is None else map(self.transform, batches)

    def _num_batches(self, split: str | None, batch_size: int) -> int:
        if split not in self._rows:  # the same every epoch: counted once (it reads the key columns)
            self._rows[split] = self.reader.num_rows(split, **self._split_kw)
        return math.ceil(self._rows[split] / (batch_size * self.world_size))

    # -- steps ---------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        torch.manual_seed(self.cfg.train.seed * 100_003 + epoch * 101 + self.rank)
        self.model.train()
        total, count = 0.0, 0
        bar = tqdm(self._batches(self.train_split, epoch, train=True),
                   total=self._num_batches(self.train_split, self.batch_size),
                   desc=f"epoch {epoch}", unit="batch", disable=None if self.progress else True, leave=False)
        clip = self.cfg.train.grad_clip
        params = list(self.dense_params.values())
        for batch in bar:
            batch = batch.to(self.device, non_blocking=True)
            logits = self.model(batch.sparse, batch.dense, self._model_domain(batch.domain))
            loss = self.loss_fn(logits, batch)
            self.dense_opt.zero_grad(set_to_none=True)
            loss.backward()  # the fused optimizer updates the tables here
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.dense_opt.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        return total / max(count, 1)

    @torch.no_grad()
    def predict(self, split: str | None, reader: DatasetReader | None = None,
                domain_map: torch.Tensor | None = None, *, window: tuple[int | None, int | None] | None = None,
                ) -> Predictions:
        """Logits, labels, the reader's domain index and example ids of every row of ``split``,
        gathered on all ranks. ``domain_map`` maps the reader's domain indices to the model's (when the
        reader holds another dataset than the one trained on); ``window`` replaces the
        trainer's time window (e.g. the day after a model's training window).
        """
        self.model.eval()
        reader = reader or self.reader
        outs: list[tuple[torch.Tensor, ...]] = []
        kw = dict(self._split_kw, ts_range=window) if window is not None else self._split_kw
        it = reader.batches(split, batch_size=self.eval_batch_size, shuffle=False, rank=self.rank,
                            world_size=self.world_size, **kw)
        spare: Batch | None = None
        for batch in prefetch(self._transformed(it), self.cfg.train.prefetch):
            if len(batch) == 0 and spare is not None:  # keep collectives in step across ranks
                self.model(spare.sparse, spare.dense, spare.domain)
                continue
            dom = self._model_domain(batch.domain, domain_map)
            b = batch.to(self.device)
            logits = self.model(b.sparse, b.dense, dom.to(self.device)).float().cpu()
            outs.append((logits, batch.labels, batch.domain, batch.example_id))
            spare = b
        empty = (torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
        parts = [torch.cat([o[i] for o in outs]) if outs else empty[i] for i in range(4)]
        if self.world_size > 1:
            parts = [_all_gather(t) for t in parts]
        return Predictions(*parts)

    def _model_domain(self, domain: torch.Tensor, domain_map: torch.Tensor | None = None) -> torch.Tensor:
        mapping = domain_map if domain_map is not None else self.domain_map
        return domain if mapping is None else mapping[domain]

    def evaluate(self, split: str) -> dict:
        logits, labels, domain, _ = self.predict(split)
        return compute_metrics(logits, labels, domain, self.reader.spec.domain_names, split=split)

    # -- loop ----------------------------------------------------------------------------
    def fit(self, *, resume: bool = False, validate_start: bool = False) -> ckpt.TrainState:
        """Train with early stopping; leaves the best epoch's weights loaded.

        ``validate_start``: the untrained starting point is validated and checkpointed as
        epoch 0 and competes with the trained epochs (1..epochs), so fine-tuning never ends
        worse on validation than where it started.
        """
        if resume and self.keep_only is not None:
            raise ValueError("a trainer that keeps only some weights in memory cannot resume")
        state = ckpt.read_state(self.ckpt_dir) if resume else None
        if state is not None and state.last_epoch >= 0:
            self.dense_opt.init_state()  # optimizer state is lazy: create it so DCP loads into it
            ckpt.load(self.model, self.optimizer, ckpt.epoch_dir(self.ckpt_dir, state.last_epoch))
            log.info("resumed from epoch %d (best %d, WAUC %.5f)", state.last_epoch, state.best_epoch,
                     state.best_wauc)
        if state is None or state.last_epoch < 0:
            state = ckpt.TrainState()
            if validate_start:
                self._end_epoch(state, 0, None, time.perf_counter())
        first = 1 if state.history and state.history[0]["train_loss"] is None else 0
        end = self.cfg.train.epochs + first
        for epoch in range(state.next_epoch, end):
            if state.stopped:
                break
            t0 = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            self._end_epoch(state, epoch, train_loss, t0, last=epoch == end - 1)
        if state.best_epoch < 0:
            raise RuntimeError(f"{self.ckpt_dir}: no epoch finished, nothing to evaluate")
        if self.keep_only is None:
            ckpt.load(self.model, None, ckpt.epoch_dir(self.ckpt_dir, state.best_epoch))
        else:
            with torch.no_grad():
                current = self.model.state_dict()
                for k, v in self._kept.items():
                    current[k].copy_(v)
        return state

    def _end_epoch(self, state: ckpt.TrainState, epoch: int, train_loss: float | None, t0: float, *,
                   last: bool = False) -> None:
        """Validate, checkpoint, update early stopping and log one epoch."""
        if self.validation:
            valid = self.evaluate("valid")
            wauc = valid["wauc"] if valid["wauc"] is not None else float("-inf")
            improved = wauc > state.best_wauc or state.best_epoch < 0
        else:  # no validation: the latest epoch is the model
            valid = {"auc": None, "wauc": None, "logloss": None}
            wauc, improved = float("-inf"), True
        if self.keep_only is None:
            ckpt.save(self.model, self.optimizer, ckpt.epoch_dir(self.ckpt_dir, epoch))
        elif improved:
            kept = {k: v for k, v in self.model.state_dict().items() if self.keep_only(k)}
            if any(type(v) is not torch.Tensor for v in kept.values()):
                raise ValueError("keep_only must select plain (unsharded) tensors")
            self._kept = {k: v.detach().clone() for k, v in kept.items()}
        state.last_epoch = epoch
        if improved:
            state.best_epoch, state.best_wauc, state.bad_epochs = epoch, wauc, 0
        else:
            state.bad_epochs += 1
        state.stopped = state.bad_epochs >= self.cfg.train.patience or last
        state.history.append({"epoch": epoch, "train_loss": None if train_loss is None else round(train_loss, 6),
                              "valid_auc": valid["auc"], "valid_wauc": valid["wauc"],
                              "valid_logloss": valid["logloss"], "seconds": round(time.perf_counter() - t0, 2)})
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_state(self.ckpt_dir, state)
            ckpt.prune(self.ckpt_dir, state)
            loss = "(start)" if train_loss is None else f"train_loss {train_loss:.5f}"
            log.info("epoch %d  %s  valid auc %s wauc %s logloss %s  (%.1fs)%s", epoch, loss, valid["auc"],
                     valid["wauc"], valid["logloss"], state.history[-1]["seconds"], "  *best" if improved else "")
        ckpt.barrier()


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length from every rank (rank order)."""
    size = torch.tensor([t.numel()], dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype)
    padded[: t.numel()] = t
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])
