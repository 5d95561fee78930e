"""The training loop: epochs, early stopping on validation WAUC, checkpoints, resume.

One :class:`Trainer` trains one model on one rank of a process group. Determinism: the data
order is a function of ``(seed, epoch)`` and the torch RNG is reseeded at each epoch from
``(seed, epoch, rank)``, so a run resumed after epoch ``e`` continues exactly as the
uninterrupted run would have.

The loss lives here, outside the model: ``job.loss(logits, batch) -> scalar`` (default BCE).
Everything else the trainer does is described by its :class:`~mdctr.platform.job.Job`;
:class:`~mdctr.platform.job.TrainerHooks` see every epoch's metrics and checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchrec.optim.keyed import CombinedOptimizer
from tqdm.auto import tqdm

from mdctr.core.errors import RunDirError
from mdctr.domains.batching import Batch, DatasetReader, prefetch
from mdctr.domains.selection import Selection
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.distill import served_logits
from mdctr.platform.distributed import dense_optimizer, shard, table_param_names
from mdctr.platform.metrics import auc_standard_error, compute_metrics
from mdctr.platform.job import Job, TrainerHooks
from mdctr.platform.model import FeatureLayout
from mdctr.platform.precision import autocast, float32, warn_if_emulated
from mdctr.platform.schedule import LRSchedule

log = logging.getLogger("mdctr.train")


def bce_loss(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(served_logits(output), batch.labels)


class Predictions(NamedTuple):
    logits: torch.Tensor  # float (N,)
    labels: torch.Tensor  # float (N,)
    domain: torch.Tensor  # int64 (N,), the reader's domain index
    example_id: torch.Tensor  # int64 (N,)


class Trainer:
    """Builds the sharded model and optimizers of one :class:`~mdctr.platform.job.Job` on
    one rank and runs its loop (:meth:`run`).

    With ``cfg.train.validation`` off, the trainer validates nothing and keeps the last epoch.
    """

    def __init__(self, job: Job, reader: DatasetReader, layout: FeatureLayout, *, rank: int = 0,
                 world_size: int = 1, device: torch.device = torch.device("cpu")):
        cfg = job.cfg
        if cfg.train.average is not None and (job.keep_only is not None or job.per_domain is not None):
            raise ValueError("train.average needs every epoch's checkpoint and one choice for every domain; "
                             "this job keeps weights in memory or selects per domain (set train.average: null)")
        self.job, self.cfg, self.reader, self.layout = job, cfg, reader, layout
        self.ckpt_dir = Path(job.ckpt_dir)
        self.keep_only = job.keep_only
        self._kept: dict[str, torch.Tensor] = {}  # keep_only: the best epoch's entries
        self.rank, self.world_size, self.device = rank, world_size, device
        if rank == 0:
            warn_if_emulated(device, cfg.train.precision)
        self.selection: Selection = job.selection
        self.domain_map = None if job.model_domains is None else torch.tensor(
            [job.model_domains.index(d) if d in job.model_domains else 0 for d in reader.spec.domain_names])
        self.group_domains = job.group_domains
        self.loss_fn = job.loss or bce_loss
        self.hooks = job.hooks or TrainerHooks()
        self.progress = job.progress and rank == 0
        self.batch_size = max(1, cfg.train.batch_size // world_size)
        self.eval_batch_size = max(1, cfg.train.eval_batch_size // world_size)
        torch.manual_seed(cfg.train.seed)  # the dense layers' initialisation
        self.model = shard(job.model(cfg, layout), device=device, batch_size=self.batch_size,
                           optim=cfg.optim.embedding)
        #: the model itself, without DMP's (and DDP's) wrappers
        self.net = self.model.module
        if hasattr(self.net, "embedding_l2"):
            self.net.embedding_l2 = cfg.train.embedding_l2
        tables = table_param_names(self.model)
        keep = job.trainable or (lambda name: True)
        self.dense_params = {n: p for n, p in self.model.named_parameters()
                             if n not in tables and p.requires_grad and keep(n)}
        self.dense_opt = dense_optimizer(self.dense_params, cfg.optim.dense)
        self.optimizer = CombinedOptimizer([self.model.fused_optimizer, self.dense_opt])
        self.schedule: LRSchedule | None = None  # made by fit() when train.lr_schedule has one
        self.transform = job.transform(layout) if job.transform is not None else None
        self.validation = cfg.train.validation
        self.train_split = job.train_split
        self._rows: dict[str | None, int] = {}

    def run(self) -> tuple[ckpt.TrainState, bool | None]:
        """The job's model on this rank: started from ``job.init``, edited, then trained
        (or its best checkpoint loaded). Returns the train state and, when the job names
        frozen entries, whether they stayed bit-identical (a change raises)."""
        job = self.job
        if not job.fit:
            state = ckpt.read_state(self.ckpt_dir)
            if state is None or state.best_epoch < 0:
                raise RunDirError("run has no finished checkpoint", file=self.ckpt_dir)
            ckpt.load(self.model, None, ckpt.epoch_dir(self.ckpt_dir, state.best_epoch), partial=True)
            for edit in job.edits:  # e.g. external adapters, on top of the run's weights
                edit(self.model)
            return state, None
        if job.init is not None:
            ckpt.load(self.model, None, job.init.epoch_dir(), partial=job.init.partial,
                      exclude=job.init.excluded if job.init.exclude else None)
        for edit in job.edits:
            edit(self.model)
        before = frozen_entries(self.model, job.frozen) if job.frozen is not None else None
        state = self.fit(resume=job.resume, validate_start=job.validate_start)
        if before is None:
            return state, None
        if not same_tensors(before, frozen_entries(self.model, job.frozen)):
            raise RuntimeError("training changed entries the job froze (backbone or another domain's adapter)")
        log.info("training left every frozen table and dense weight bit-identical")
        return state, True

    # -- data ----------------------------------------------------------------------------
    def _batches(self, split: str | None, epoch: int, *, train: bool):
        it = self.reader.batches(
            split, self.selection, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
            seed=self.cfg.train.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
            drop_last=train and self.world_size > 1, group_domains=train and self.group_domains)
        return prefetch(self._transformed(it), self.cfg.train.prefetch)

    def _transformed(self, batches):
        return batches if self.transform is None else map(self.transform, batches)

    def _num_batches(self, split: str | None, batch_size: int) -> int:
        return math.ceil(self.num_rows(split) / (batch_size * self.world_size))

    def num_rows(self, split: str | None) -> int:
        """Rows of ``split`` of the selection (counted once: it reads the key columns)."""
        if split not in self._rows:
            self._rows[split] = self.reader.num_rows(split, self.selection)
        return self._rows[split]

    # -- steps ---------------------------------------------------------------------------
    def train_epoch(self, epoch: int, *, trained: int | None = None, history: list[dict] = ()) -> float:
        """One epoch over the training rows; ``trained`` (0-based among the trained epochs,
        default ``epoch``) and the epoch ``history`` so far place it on the lr schedule."""
        torch.manual_seed(self.cfg.train.seed * 100_003 + epoch * 101 + self.rank)
        self.model.train()
        total, count = 0.0, 0
        bar = tqdm(self._batches(self.train_split, epoch, train=True),
                   total=self._num_batches(self.train_split, self.batch_size),
                   desc=f"epoch {epoch}", unit="batch", disable=None if self.progress else True, leave=False)
        clip = self.cfg.train.grad_clip
        params = list(self.dense_params.values())
        for step, batch in enumerate(bar):
            if self.schedule is not None and self.schedule.set(
                    epoch=epoch if trained is None else trained, step=step, history=history):
                self.model.fused_optimizer.zero_grad()  # fbgemm takes the group's new lr here
            batch = batch.to(self.device, non_blocking=True)
            with autocast(self.device, self.cfg.train.precision):
                output = self.model(batch.sparse, batch.dense, self._model_domain(batch.domain), batch.inputs)
            loss = self.loss_fn(float32(output), batch)
            penalty = getattr(self.net, "penalty", None)
            self.dense_opt.zero_grad(set_to_none=True)
            if penalty is not None:
                self.net.penalty = None
                (loss + penalty).backward()  # the fused optimizer updates the tables here
            else:
                loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.dense_opt.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        return total / max(count, 1)

    @torch.no_grad()
    def predict(self, split: str | None, *, selection: Selection | None = None) -> Predictions:
        """Logits, labels, the reader's domain index and example ids of every row of ``split``
        of the job's selection (or of ``selection``), gathered on all ranks."""
        self.model.eval()
        outs: list[tuple[torch.Tensor, ...]] = []
        it = self.reader.batches(split, selection or self.selection, batch_size=self.eval_batch_size,
                                 shuffle=False, rank=self.rank, world_size=self.world_size)
        spare: Batch | None = None
        for batch in prefetch(self._transformed(it), self.cfg.train.prefetch):
            if len(batch) == 0 and spare is not None:  # keep collectives in step across ranks
                self.model(spare.sparse, spare.dense, spare.domain, spare.inputs)
                continue
            dom = self._model_domain(batch.domain)
            b = batch.to(self.device)
            logits = served_logits(self.model(b.sparse, b.dense, dom.to(self.device), b.inputs)).float().cpu()
            outs.append((logits, batch.labels, batch.domain, batch.example_id))
            spare = b
        empty = (torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
        parts = [torch.cat([o[i] for o in outs]) if outs else empty[i] for i in range(4)]
        if self.world_size > 1:
            parts = [_all_gather(t) for t in parts]
        return Predictions(*parts)

    def _model_domain(self, domain: torch.Tensor) -> torch.Tensor:
        return domain if self.domain_map is None else self.domain_map[domain]

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
            state = self._intact_resume_point(state)
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
        log.info("training on %d rows (%s)", self.num_rows(self.train_split), self.train_split or "every split")
        sched = self.cfg.train.lr_schedule
        if sched.warmup_epochs or sched.decay != "none":
            self.schedule = LRSchedule(sched, self.optimizer.param_groups, epochs=self.cfg.train.epochs,
                                       steps_per_epoch=self._num_batches(self.train_split, self.batch_size))
        for epoch in range(state.next_epoch, end):
            if state.stopped:
                break
            t0 = time.perf_counter()
            train_loss = self.train_epoch(epoch, trained=epoch - first, history=state.history)
            self._end_epoch(state, epoch, train_loss, t0, last=epoch == end - 1)
        if state.best_epoch < 0:
            raise RuntimeError(f"{self.ckpt_dir}: no epoch finished, nothing to evaluate")
        if self.job.per_domain is not None and not (state.history and "selected" in state.history[-1]):
            self._assemble_domains(state)
        if self.cfg.train.average is not None and not (state.history and "averaged" in state.history[-1]):
            self._average_epochs(state)
        if self.keep_only is None:
            ckpt.load(self.model, None, ckpt.epoch_dir(self.ckpt_dir, state.best_epoch))
        elif self._kept:
            with torch.no_grad():
                current = self.model.state_dict()
                for k, v in self._kept.items():
                    current[k].copy_(v)
        return state

    # -- per-domain selection ---------------------------------------------------------------
    def _kept_epochs(self, state: ckpt.TrainState) -> list[int]:
        """Epochs whose checkpoints per-domain selection or epoch averaging still needs."""
        if self.cfg.train.average is not None:
            return [] if state.history and "averaged" in state.history[-1] else self._averaged(state)
        if self.job.per_domain is None:
            return []
        raw, chosen = domain_bests(state.history), domain_bests(state.history, self.job.per_domain_margin)
        return [e for e, _ in (*raw.values(), *chosen.values())]

    # -- epoch averaging -------------------------------------------------------------------
    def _averaged(self, state: ckpt.TrainState) -> list[int]:
        """The trained epochs ``train.average`` averages."""
        return [h["epoch"] for h in state.history
                if h["train_loss"] is not None and h["epoch"] >= self.cfg.train.average.from_epoch]

    def _average_epochs(self, state: ckpt.TrainState) -> None:
        """The mean of the weights after every epoch :meth:`_averaged` names (an entry no
        epoch changed, e.g. a frozen one, stays bit-identical), validated and checkpointed as
        epoch ``last + 1``; it becomes the best epoch if its validation WAUC beats the best's
        (without validation: always)."""
        epochs = self._averaged(state)
        if len(epochs) < 2:
            log.info("epoch averaging: %d epoch(s) from epoch %d, nothing to average", len(epochs),
                     self.cfg.train.average.from_epoch)
            return
        t0 = time.perf_counter()
        first: dict[str, torch.Tensor] = {}
        total: dict[str, torch.Tensor] = {}
        changed: set[str] = set()
        for epoch in epochs:
            ckpt.load(self.model, None, ckpt.epoch_dir(self.ckpt_dir, epoch))
            for k, v in local_entries(self.model).items():
                if not v.is_floating_point():
                    continue
                if k not in first:
                    first[k], total[k] = v.detach().clone(), v.detach().clone()
                    continue
                total[k].add_(v)
                if k not in changed and not torch.equal(v, first[k]):
                    changed.add(k)
        with torch.no_grad():
            for k, v in local_entries(self.model).items():
                if k in first:
                    v.copy_(total[k].div_(len(epochs)) if k in changed else first[k])
        epoch = state.last_epoch + 1
        valid = self.evaluate("valid") if self.validation else {"auc": None, "wauc": None, "logloss": None}
        ckpt.save(self.model, self.optimizer, ckpt.epoch_dir(self.ckpt_dir, epoch))
        wauc = valid["wauc"] if valid["wauc"] is not None else float("-inf")
        kept = not self.validation or wauc > state.best_wauc
        best_before = state.best_epoch
        state.last_epoch, state.stopped = epoch, True
        if kept:
            state.best_epoch, state.best_wauc = epoch, wauc
        state.history.append({**epoch_record(epoch, None, valid, t0), "averaged": epochs})
        if self.rank == 0:
            ckpt.write_state(self.ckpt_dir, state)
            ckpt.prune(self.ckpt_dir, state)
            log.info("epoch averaging: epochs %d-%d  valid wauc %s  %s", epochs[0], epochs[-1], valid["wauc"],
                     "*best" if kept else f"(epoch {best_before} stays the model)")
        ckpt.barrier()

    def _assemble_domains(self, state: ckpt.TrainState) -> None:
        """The global best epoch with every domain's own entries from its best epoch,
        validated and checkpointed as epoch ``last + 1``, which becomes the best."""
        base = state.best_epoch
        ckpt.load(self.model, None, ckpt.epoch_dir(self.ckpt_dir, base))
        selected = {d: e for d, (e, _) in sorted(domain_bests(state.history, self.job.per_domain_margin).items())}
        for epoch in sorted(set(selected.values()) - {base}):  # one load per epoch, its domains' entries
            mine = [d for d, e in selected.items() if e == epoch]
            ckpt.load(self.model, None, ckpt.epoch_dir(self.ckpt_dir, epoch),
                      exclude=lambda key: not any(self.job.per_domain(key, d) for d in mine))
        epoch = state.last_epoch + 1
        t0 = time.perf_counter()
        valid = self.evaluate("valid")
        ckpt.save(self.model, self.optimizer, ckpt.epoch_dir(self.ckpt_dir, epoch))
        state.last_epoch = state.best_epoch = epoch
        state.best_wauc = valid["wauc"] if valid["wauc"] is not None else float("-inf")
        state.stopped = True
        state.history.append({**epoch_record(epoch, None, valid, t0), "selected": selected})
        if self.rank == 0:
            ckpt.write_state(self.ckpt_dir, state)
            ckpt.prune(self.ckpt_dir, state, self._kept_epochs(state))
            log.info("per-domain selection: %s  valid wauc %s", ", ".join(f"{d} epoch {e}" for d, e in
                                                                       selected.items()), valid["wauc"])
        ckpt.barrier()

    def _intact_resume_point(self, state: ckpt.TrainState) -> ckpt.TrainState:
        """The state to resume from: the last epoch if its checkpoint is intact, else the
        best epoch (the only earlier one kept) with the history after it dropped, so training
        goes on from there exactly as it did the first time; raises if neither is intact."""
        last = ckpt.epoch_dir(self.ckpt_dir, state.last_epoch)
        if ckpt.intact(last):
            return state
        best = ckpt.epoch_dir(self.ckpt_dir, state.best_epoch)
        if state.best_epoch == state.last_epoch or not ckpt.intact(best):
            ckpt.verify_checksums(last)  # raises, naming the damaged file
        log.warning("the checkpoint of epoch %d is damaged; resuming from epoch %d, the last intact one",
                    state.last_epoch, state.best_epoch)
        history = [h for h in state.history if h["epoch"] <= state.best_epoch]
        return ckpt.TrainState(last_epoch=state.best_epoch, best_epoch=state.best_epoch, best_wauc=state.best_wauc,
                               bad_epochs=0, stopped=False, history=history)

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
        record = epoch_record(epoch, train_loss, valid, t0)
        # per-domain selection: an epoch that is some domain's best so far also counts as progress
        domain_improved = self.job.per_domain is not None and \
            domain_bests([*state.history, record]) != domain_bests(state.history)
        checkpoint = None
        if self.keep_only is None:
            checkpoint = ckpt.epoch_dir(self.ckpt_dir, epoch)
            ckpt.save(self.model, self.optimizer, checkpoint)
        elif improved:
            kept = {k: v for k, v in self.model.state_dict().items() if self.keep_only(k)}
            if any(type(v) is not torch.Tensor for v in kept.values()):
                raise ValueError("keep_only must select plain (unsharded) tensors")
            self._kept = {k: v.detach().clone() for k, v in kept.items()}
        state.last_epoch = epoch
        if improved:
            state.best_epoch, state.best_wauc = epoch, wauc
        state.bad_epochs = 0 if improved or domain_improved else state.bad_epochs + 1
        record["seconds"] = round(time.perf_counter() - t0, 2)  # checkpoint included
        state.history.append(record)
        hook_stop = bool(self.hooks.on_epoch_end(epoch, dict(record), checkpoint))
        state.stopped = state.bad_epochs >= self.cfg.train.patience or last or hook_stop
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_state(self.ckpt_dir, state)
            ckpt.prune(self.ckpt_dir, state, self._kept_epochs(state))
            if hook_stop:
                log.info("stopped by a hook after epoch %d", epoch)
            loss = "(start)" if train_loss is None else f"train_loss {train_loss:.5f}"
            log.info("epoch %d  %s  valid auc %s wauc %s logloss %s  (%.1fs)%s", epoch, loss, valid["auc"],
                     valid["wauc"], valid["logloss"], state.history[-1]["seconds"], "  *best" if improved else "")
        ckpt.barrier()


def epoch_record(epoch: int, train_loss: float | None, valid: dict, t0: float) -> dict:
    """One epoch's history entry; with several domains also each one's validation AUC and
    its standard error (what per-domain selection reads)."""
    record = {"epoch": epoch, "train_loss": None if train_loss is None else round(train_loss, 6),
              "valid_auc": valid["auc"], "valid_wauc": valid["wauc"], "valid_logloss": valid["logloss"],
              "seconds": round(time.perf_counter() - t0, 2)}
    if valid.get("domains") and len(valid["domains"]) > 1:
        record["valid_domain_auc"] = {d: m["auc"] for d, m in valid["domains"].items()}
        record["valid_domain_se"] = {d: _auc_se(m) for d, m in valid["domains"].items()}
    return record


def _auc_se(domain_metrics: dict) -> float | None:
    auc, n, pos = domain_metrics.get("auc"), domain_metrics.get("n"), domain_metrics.get("positives")
    if auc is None or n is None or pos is None:
        return None
    se = auc_standard_error(auc, pos, n - pos)
    return round(se, 6) if se != float("inf") else None


def domain_bests(history: list[dict], margin: float = 0.0) -> dict[str, tuple[int, float]]:
    """Each domain's best epoch and validation AUC in an epoch ``history`` (the first epoch
    of the highest AUC; epochs without the domain's AUC, e.g. one class only, are skipped).

    ``margin`` > 0: a later epoch counts only if its AUC beats the domain's first epoch (the
    start) by more than ``margin`` standard errors of that AUC on the domain's validation
    rows (``valid_domain_se``), so a gain a few dozen rows could show by chance keeps the
    start."""
    best: dict[str, tuple[int, float]] = {}
    bar: dict[str, float] = {}
    for record in history:
        if "selected" in record:
            continue
        errors = record.get("valid_domain_se") or {}
        for domain, auc in (record.get("valid_domain_auc") or {}).items():
            if auc is None or auc != auc:
                continue
            if domain not in best:
                best[domain] = (record["epoch"], auc)
                se = errors.get(domain)
                bar[domain] = auc + margin * (se if se is not None else float("inf")) if margin else auc
            elif auc > best[domain][1] and auc > bar[domain]:
                best[domain] = (record["epoch"], auc)
    return best


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


def local_entries(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state-dict entries as this rank holds them, views of its live weights: a
    sharded table's local shards as ``name#0``, ``name#1``, ..."""
    out = {}
    for name, value in model.state_dict().items():
        if hasattr(value, "local_shards"):
            for i, shard in enumerate(value.local_shards()):
                out[f"{name}#{i}"] = shard.tensor
        elif torch.is_tensor(value):
            out[name] = value
    return out


def frozen_entries(model: torch.nn.Module, which) -> dict[str, torch.Tensor]:
    """Copies of the model entries (state-dict keys) ``which`` selects, as this rank holds
    them (local shards of sharded tables)."""
    return {k: v.detach().clone() for k, v in local_entries(model).items() if which(k.partition("#")[0])}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
