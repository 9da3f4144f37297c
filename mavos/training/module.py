"""VOSLitModule: trains a ``VOSNetwork`` by unrolling clips through ``ObjectTracker`` (the inference path),
and validates by segmenting whole videos through ``segment_video`` (the function evaluate.py uses).

Per clip: the first frame is a reference (auxiliary loss, weight decaying to 0), every later frame is
propagated from memory and supervised; its memory mask is the ground truth for the first
``sequential_start`` fraction of training, the model's own prediction afterwards. From that switch on the
ID bank is frozen as in the released recipe: no gradient reaches it (its embeddings are constants) and its
parameter groups run at learning rate and weight decay 0.
"""
from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics.aggregation import SumMetric

from mavos.checkpoints.loading import NETWORK_KEY
from mavos.data.datamodule import NO_VIDEO
from mavos.evaluation.evaluator import segment_video
from mavos.inference.tracker import ObjectTracker, one_hot_mask
from mavos.metrics.jf import JFMetric
from mavos.metrics.protocols import plan_for_record
from mavos.model.vos import VOSNetwork
from mavos.training.losses import VOID_ID, VOSLoss
from mavos.training.schedule import RecipeLRLambda, aux_weight

log = logging.getLogger(__name__)

# Parameters that never get weight decay besides biases and norms (the released recipe's exceptions).
NO_WEIGHT_DECAY_NAMES = ("decoder.conv_out", "relative_position_bias_table")
IDENTITY_PREFIX = "id_bank."


def random_id_permutation(batch: int, max_objects: int, device: torch.device, generator=None) -> torch.Tensor:
    """(B, 1+N, 1+N) permutation matrices that keep the background and shuffle the object identities."""
    mats = []
    eye = torch.eye(max_objects + 1, device=device)
    for _ in range(batch):
        perm = torch.randperm(max_objects, generator=generator).to(device) + 1
        mats.append(torch.cat([eye[:1], eye[1:][perm - 1]], dim=0))
    return torch.stack(mats)


def parameter_group_name(name: str, param: torch.Tensor) -> str:
    """encoder / identity / main, with ``_no_wd`` for 1-D tensors (biases, norms) and the named exceptions."""
    if name.startswith("encoder."):
        group = "encoder"
    elif name.startswith(IDENTITY_PREFIX):
        group = "identity"
    else:
        group = "main"
    no_wd = param.ndim <= 1 or any(key in name for key in NO_WEIGHT_DECAY_NAMES)
    return group + ("_no_wd" if no_wd else "")


class VOSLitModule(L.LightningModule):
    def __init__(self, net: VOSNetwork, loss: VOSLoss | None = None, lr: float = 5e-5, min_lr: float = 2e-5,
                 weight_decay: float = 0.07, encoder_lr_ratio: float = 0.1, warmup_ratio: float = 0.05,
                 lr_power: float = 0.9, long_term_gap: int | None = None, aux_loss_weight: float = 1.0,
                 aux_loss_ratio: float = 1.0, sequential_start: float = 0.5, shuffle_ids: bool = True, total_steps: int | None = None,
                 protocol: str = "davis", val_session: dict | None = None, panel_frames: int = 4):
        super().__init__()
        if val_session is not None and not isinstance(val_session, dict):  # a DictConfig from Hydra
            val_session = OmegaConf.to_container(val_session, resolve=True)  # checkpoints keep plain types
        self.save_hyperparameters(ignore=["net", "loss"])
        self.net = net
        self.loss = loss if loss is not None else VOSLoss()
        # what checkpoints store about the network (set by train(): the resolved config and its model name)
        self.network_record: dict | None = None
        scored = protocol if protocol != "none" else "davis"
        self.val_jf = JFMetric(scored)
        self.val_frames = SumMetric()
        self.val_seconds = SumMetric()
        self.val_history: list[tuple[int, float]] = []   # (step, val/J&F), kept in checkpoints
        self._panels: dict[str, list] = {}
        # DDP: a rank may get no validation video (fewer videos than ranks); it runs one empty step (NO_VIDEO)
        # and joins the J&F gathers

    # ------------------------------------------------------------------ training
    @property
    def total_steps(self) -> int:
        if self.hparams.total_steps:
            return int(self.hparams.total_steps)
        return int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1

    def sequential_step(self) -> int:
        """The step from which the model's own predictions are the memory masks (and the ID bank is frozen)."""
        return int(self.hparams.sequential_start * self.total_steps)

    def unroll(self, frames: torch.Tensor, masks: torch.Tensor, num_objects: torch.Tensor, step: int,
               use_predictions: bool = False):
        """Run a clip batch (B, T, 3, H, W) / (B, T, H, W) (255 = void); returns (loss, aux_loss, predictions)."""
        b, t = frames.shape[:2]
        n = self.net.max_objects
        memory_masks = torch.where(masks == VOID_ID, torch.zeros_like(masks), masks)  # void is background there
        if int(memory_masks.max()) > n:
            raise ValueError(f"a training clip holds object id {int(memory_masks.max())}; the ID bank holds {n}")
        counts = [int(k) for k in num_objects]
        total = self.total_steps
        perm = random_id_permutation(b, n, frames.device) if (self.hparams.shuffle_ids and self.training) else None
        tracker = ObjectTracker(self.net, counts, self.hparams.long_term_gap, id_permutation=perm)
        encoded = self.net.encode(frames.flatten(0, 1))
        per_frame = [encoded.select(slice(i, None, t)) for i in range(t)]
        size = frames.shape[-2:]

        def upsample(logits):
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.net.align_corners)

        ref_logits = upsample(tracker.reference(per_frame[0], one_hot_mask(memory_masks[:, 0], n)))
        aux_loss = self.loss(ref_logits, masks[:, 0], counts, step, total)
        losses, preds = [], [ref_logits.argmax(1)]
        for i in range(1, t):
            logits = upsample(tracker.propagate(per_frame[i]))
            losses.append(self.loss(logits, masks[:, i], counts, step, total))
            pred = logits.argmax(1)
            preds.append(pred)
            if i < t - 1:
                memory_mask = pred.detach() if use_predictions else memory_masks[:, i]
                tracker.memorize(one_hot_mask(memory_mask, n))
        frame_loss = torch.stack(losses).mean()
        return frame_loss, aux_loss, torch.stack(preds, 1)

    def freeze_identity(self, frozen: bool) -> None:
        """Sequential training: the ID bank gets no gradient (its embeddings are detached constants)."""
        for p in self.net.id_bank.parameters():
            p.requires_grad_(not frozen)
        if self._trainer is not None and self.trainer.optimizers:
            for group in self.trainer.optimizers[0].param_groups:
                if group.get("name", "").startswith("identity"):
                    group["weight_decay"] = 0.0 if frozen else group.get("initial_weight_decay", 0.0)

    def training_step(self, batch, batch_idx):
        step = self.global_step
        total = self.total_steps
        use_pred = step >= self.sequential_step()
        self.freeze_identity(use_pred)
        frame_loss, aux_loss, _ = self.unroll(batch["frames"], batch["masks"], batch["num_objects"], step, use_pred)
        aux_w = aux_weight(step, total, self.hparams.aux_loss_weight, self.hparams.get("aux_loss_ratio", 1.0))
        loss = frame_loss + aux_w * aux_loss
        bs = batch["frames"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/frame_loss", frame_loss, batch_size=bs)
        self.log("train/aux_loss", aux_loss, batch_size=bs)
        self.log("train/hard_pixel_fraction", self.loss.hard_fraction(step, total), batch_size=bs)
        return loss

    # ------------------------------------------------------------------ validation
    def validation_step(self, index: int, batch_idx: int):
        """Segment one whole val video exactly as evaluate.py does (eval mode, test gap, sizing, groups)."""
        if int(index) == NO_VIDEO:  # this rank has no video; the step only keeps DDP's collectives in step
            return
        datamodule = self.trainer.datamodule
        record = datamodule.validation_videos()[int(index)]
        panel_frames: set[int] = set()
        plan = plan_for_record(record, self.hparams.protocol)
        if int(index) in datamodule.panel_indices and plan is not None and plan.frame_indices:
            chosen = plan.frame_indices
            k = max(1, int(self.hparams.panel_frames))
            panel_frames = {chosen[round(j * (len(chosen) - 1) / max(1, k - 1))] for j in range(k)}
        frames = []

        def keep_panel(i, frame, label):
            frames.append((i, frame, label))

        result = segment_video(self.net, record, protocol=self.hparams.protocol, plan=plan,
                               session_kwargs=self.hparams.val_session or {}, frame_hook=keep_panel,
                               hook_frames=panel_frames, progress=False)
        if result.scorer is not None:
            self.val_jf.update(result.scorer)
        self.val_frames.update(torch.tensor(float(result.frames - 1), dtype=torch.float64))
        self.val_seconds.update(torch.tensor(result.model_seconds, dtype=torch.float64))
        if frames:
            self._panels[record.name] = (record, sorted(frames, key=lambda x: x[0]))

    def on_validation_epoch_end(self) -> None:
        from mavos.training.dashboard import log_validation

        if self.trainer.sanity_checking:
            self.val_jf.reset(), self.val_frames.reset(), self.val_seconds.reset()
            self._panels = {}
            return
        row = self.val_jf.compute()          # gathers across ranks: every rank calls it
        per_video = self.val_jf.per_video_rows()
        frames, seconds = float(self.val_frames.compute()), float(self.val_seconds.compute())
        fps = frames / seconds if seconds > 0 else float("nan")
        values = {"val/J&F": row["J&F-Mean"], "val/J": row["J-Mean"], "val/F": row["F-Mean"], "val/fps": fps}
        step = int(self.global_step)
        for key, value in values.items():
            self.log(key, value, sync_dist=True)
        self.log("step", float(step), sync_dist=True)  # the loggers' x value: the optimizer step, as for the panels
        if not self.val_history or self.val_history[-1][0] != step:
            self.val_history.append((step, float(row["J&F-Mean"])))
        if self.trainer.is_global_zero:
            log_validation(self.trainer, step, values, per_video, self._panels, self.val_history)
        self.val_jf.reset(), self.val_frames.reset(), self.val_seconds.reset()
        self._panels = {}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.network_record is not None:
            checkpoint[NETWORK_KEY] = self.network_record
        checkpoint["mavos_val_history"] = list(self.val_history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_history = [tuple(x) for x in checkpoint.get("mavos_val_history", [])]
        # The schedule follows this run's config: LambdaLR would restore the saved lambdas' fields (their
        # total_steps, the ID bank's freeze step), so a run resumed with a longer trainer.max_steps would decay
        # on the old length while the rest of the recipe (sequential training, aux weight) uses the new one.
        for state in checkpoint.get("lr_schedulers", []):
            if "lr_lambdas" in state:
                state["lr_lambdas"] = [None] * len(state["lr_lambdas"])

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        groups: dict[str, list] = {}
        for name, p in self.net.named_parameters():
            if p.requires_grad or name.startswith(IDENTITY_PREFIX):
                groups.setdefault(parameter_group_name(name, p), []).append(p)
        param_groups = []
        for name, params in groups.items():
            wd = 0.0 if name.endswith("_no_wd") else hp.weight_decay
            param_groups.append({"params": params, "weight_decay": wd, "initial_weight_decay": wd, "name": name})
        opt = torch.optim.AdamW(param_groups, lr=hp.lr, weight_decay=hp.weight_decay)
        total = self.total_steps
        freeze_at = self.sequential_step()
        lambdas = [RecipeLRLambda(total, hp.lr, hp.min_lr, hp.warmup_ratio, hp.lr_power,
                                  hp.encoder_lr_ratio if g["name"].startswith("encoder") else 1.0,
                                  zero_from=freeze_at if g["name"].startswith("identity") else None)
                   for g in param_groups]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
