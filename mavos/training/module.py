"""VOSLitModule: trains a ``VOSNetwork`` by unrolling clips through ``ObjectTracker`` (the inference path).

Per clip: the first frame is a reference (auxiliary loss, weight decaying to 0), every later frame is
propagated from memory and supervised; its memory mask is the ground truth for the first
``sequential_start`` fraction of training, the model's own prediction afterwards.
"""
from __future__ import annotations


import lightning as L
import torch
import torch.nn.functional as F

from mavos.inference.tracker import ObjectTracker, one_hot_mask
from mavos.model.vos import VOSNetwork
from mavos.training.losses import VOSLoss
from mavos.training.schedule import RecipeLRLambda


def random_id_permutation(batch: int, max_objects: int, device: torch.device, generator=None) -> torch.Tensor:
    """(B, 1+N, 1+N) permutation matrices that keep the background and shuffle the object identities."""
    mats = []
    eye = torch.eye(max_objects + 1, device=device)
    for _ in range(batch):
        perm = torch.randperm(max_objects, generator=generator).to(device) + 1
        mats.append(torch.cat([eye[:1], eye[1:][perm - 1]], dim=0))
    return torch.stack(mats)


class VOSLitModule(L.LightningModule):
    def __init__(self, net: VOSNetwork, loss: VOSLoss | None = None, lr: float = 5e-5, min_lr: float = 2e-5,
                 weight_decay: float = 0.07, encoder_lr_ratio: float = 0.1, warmup_ratio: float = 0.05,
                 lr_power: float = 0.9, long_term_gap: int | None = None, aux_loss_weight: float = 1.0,
                 sequential_start: float = 0.5, shuffle_ids: bool = True, total_steps: int | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss"])
        self.net = net
        self.loss = loss if loss is not None else VOSLoss()

    # ------------------------------------------------------------------ training
    @property
    def total_steps(self) -> int:
        if self.hparams.total_steps:
            return int(self.hparams.total_steps)
        return int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1

    def unroll(self, frames: torch.Tensor, masks: torch.Tensor, num_objects: torch.Tensor, step: int,
               use_predictions: bool = False):
        """Run a clip batch (B, T, 3, H, W) / (B, T, H, W); returns (loss, aux_loss, frame_loss, predictions)."""
        b, t = frames.shape[:2]
        n = self.net.max_objects
        if int(masks.max()) > n:
            raise ValueError(f"a training clip holds object id {int(masks.max())}; the ID bank holds {n}")
        counts = [int(k) for k in num_objects]
        perm = random_id_permutation(b, n, frames.device) if (self.hparams.shuffle_ids and self.training) else None
        tracker = ObjectTracker(self.net, counts, self.hparams.long_term_gap, id_permutation=perm)
        encoded = self.net.encode(frames.flatten(0, 1))
        per_frame = [encoded.select(slice(i, None, t)) for i in range(t)]
        size = frames.shape[-2:]

        def upsample(logits):
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.net.align_corners)

        ref_logits = upsample(tracker.reference(per_frame[0], one_hot_mask(masks[:, 0], n)))
        aux_loss = self.loss(ref_logits, masks[:, 0], counts, step)
        losses, preds = [], [ref_logits.argmax(1)]
        for i in range(1, t):
            logits = upsample(tracker.propagate(per_frame[i]))
            losses.append(self.loss(logits, masks[:, i], counts, step))
            pred = logits.argmax(1)
            preds.append(pred)
            if i < t - 1:
                memory_mask = pred.detach() if use_predictions else masks[:, i]
                one_hot = one_hot_mask(memory_mask, n)
                tracker.memorize(one_hot)
        frame_loss = torch.stack(losses).mean()
        return frame_loss, aux_loss, torch.stack(preds, 1)

    def training_step(self, batch, batch_idx):
        step = self.global_step
        total = self.total_steps
        use_pred = step >= self.hparams.sequential_start * total
        frame_loss, aux_loss, _ = self.unroll(batch["frames"], batch["masks"], batch["num_objects"], step, use_pred)
        aux_w = self.hparams.aux_loss_weight * max(0.0, (total - step) / total)
        loss = frame_loss + aux_w * aux_loss
        bs = batch["frames"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/frame_loss", frame_loss, batch_size=bs)
        self.log("train/aux_loss", aux_loss, batch_size=bs)
        self.log("train/hard_pixel_fraction", self.loss.hard_fraction(step), batch_size=bs)
        return loss

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        groups = {"encoder": ([], hp.weight_decay), "encoder_no_wd": ([], 0.0), "main": ([], hp.weight_decay),
                  "main_no_wd": ([], 0.0)}
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            no_wd = p.ndim <= 1 or name.startswith("decoder.conv_out")
            key = ("encoder" if name.startswith("encoder.") else "main") + ("_no_wd" if no_wd else "")
            groups[key][0].append(p)
        param_groups = [{"params": ps, "weight_decay": wd, "name": k} for k, (ps, wd) in groups.items() if ps]
        opt = torch.optim.AdamW(param_groups, lr=hp.lr, weight_decay=hp.weight_decay)
        total = self.total_steps
        lambdas = [RecipeLRLambda(total, hp.lr, hp.min_lr, hp.warmup_ratio, hp.lr_power,
                                  hp.encoder_lr_ratio if g["name"].startswith("encoder") else 1.0)
                   for g in param_groups]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
