"""The released training recipe, point by point: void pixels, hard-pixel mining, the ID bank freeze, the EMA,
parameter groups; expectations worked out from the definitions, not by the code under test."""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from mavos.registry import build_network
from mavos.training.ema import RecipeEMA, RecipeEMAAverage, recipe_ema_decay, warmed_up_decay
from mavos.training.losses import VOSLoss
from mavos.training.module import VOSLitModule, parameter_group_name
from mavos.training.schedule import RecipeLRLambda


# ---------------------------------------------------------------- loss

def _manual_loss(logits: torch.Tensor, labels: torch.Tensor, n_obj: int) -> float:
    """0.5 CE (mean over all pixels, void contributing 0) + 0.5 soft Jaccard over non-void pixels, by loops."""
    c, h, w = logits.shape[1:]
    prob = torch.softmax(logits[0].double(), 0)
    ce_sum, jac = 0.0, []
    for y in range(h):
        for x in range(w):
            lab = int(labels[0, y, x])
            if lab != 255:
                ce_sum += -math.log(float(prob[lab, y, x]))
    ce = ce_sum / (h * w)
    for k in range(n_obj + 1):
        inter = union_p = union_g = 0.0
        for y in range(h):
            for x in range(w):
                lab = int(labels[0, y, x])
                if lab == 255:
                    continue
                p, g = float(prob[k, y, x]), float(lab == k)
                inter += p * g
                union_p += p
                union_g += g
        if union_g > 0:
            jac.append(1 - inter / (union_p + union_g - inter + 1e-6))
    return 0.5 * ce + 0.5 * float(np.mean(jac))


def test_void_label_is_ignored_by_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 6, 7)
    labels = torch.zeros(1, 6, 7, dtype=torch.long)
    labels[0, 1:4, 2:5] = 1
    labels[0, 5, :] = 255                       # a void band
    loss = VOSLoss(top_k_fraction=1.0, mining_fraction=0.0)
    value = float(loss(logits, labels, [1], step=0, total_steps=10))
    assert value == pytest.approx(_manual_loss(logits, labels, 1), rel=1e-5)
    changed = logits.clone()
    changed[0, :, 5, :] = torch.randn(3, 7) * 10  # whatever the model says on void pixels does not matter
    assert float(loss(changed, labels, [1], step=0, total_steps=10)) == pytest.approx(value, rel=1e-6)


def test_hard_pixel_mining_anneals_over_a_fraction_of_the_run():
    loss = VOSLoss(top_k_fraction=0.15, mining_fraction=0.5)
    for total in (1000, 100_000):
        assert loss.hard_fraction(0, total) == pytest.approx(1.0)
        assert loss.hard_fraction(total // 4, total) == pytest.approx(0.5 * 0.15 + 0.5)
        assert loss.hard_fraction(total // 2, total) == pytest.approx(0.15)
        assert loss.hard_fraction(total, total) == pytest.approx(0.15)


def test_bootstrapped_ce_keeps_the_hardest_pixels():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([4.0, 1.0, -1.0, -3.0])  # log-odds of class 1
    labels = torch.zeros(1, 1, 4, dtype=torch.long)      # all background: the 2 hardest are pixels 0 and 1
    ce = [math.log(1 + math.exp(v)) for v in (4.0, 1.0, -1.0, -3.0)]
    got = VOSLoss(top_k_fraction=0.5, mining_fraction=0.0, jaccard_weight=0.0, ce_weight=1.0)(
        logits, labels, [1], step=0, total_steps=1)
    assert float(got) == pytest.approx((ce[0] + ce[1]) / 2, rel=1e-6)


# ---------------------------------------------------------------- EMA

def test_recipe_ema_decay_and_warm_up():
    assert recipe_ema_decay(100_000) == pytest.approx(0.9999)
    assert recipe_ema_decay(1000) == pytest.approx(0.99)
    assert warmed_up_decay(0.9999, 1) == pytest.approx(2 / 11)
    assert warmed_up_decay(0.9999, 100) == pytest.approx(101 / 110)
    assert warmed_up_decay(0.99, 10 ** 6) == pytest.approx(0.99)


class _Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, idx):
        return (self.layer(batch[0]) - batch[1]).pow(2).mean()

    def on_train_batch_end(self, *args):
        self.seen.append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_recipe_ema_callback_averages_as_the_released_code(tmp_path):
    """shadow_0 = initial weights; shadow_n = d_n shadow_{n-1} + (1 - d_n) w_n, d_n = min(decay, (1+n)/(10+n))."""
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(5)]
    module = _Linear()
    initial = module.layer.weight.detach().clone()
    ema = RecipeEMA(total_steps=50)
    trainer = L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ema], default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    decay = 1 - 1 / (0.1 * 50)
    shadow = initial.double()
    for n, w in enumerate(module.seen[:5], start=1):
        d = min(decay, (1 + n) / (10 + n))
        shadow = d * shadow + (1 - d) * w.double()
    # at the end of training the callback copies the average into the module
    assert torch.allclose(module.layer.weight.double(), shadow, atol=1e-6)
    assert ema.decay == pytest.approx(decay)


def test_ema_average_function_is_picklable_and_pure():
    import pickle

    fn = pickle.loads(pickle.dumps(RecipeEMAAverage(0.99)))
    a, b = torch.tensor([1.0]), torch.tensor([3.0])
    d = min(0.99, 4 / 13)
    assert torch.allclose(fn(a, b, torch.tensor(3)), torch.tensor([d * 1.0 + (1 - d) * 3.0]))


# ---------------------------------------------------------------- parameter groups and the ID bank freeze

def test_parameter_groups_name_the_recipes_exceptions():
    w2 = torch.zeros(2, 2)
    assert parameter_group_name("encoder.layers.1.blocks.0.attn.relative_position_bias_table", w2) == "encoder_no_wd"
    assert parameter_group_name("decoder.conv_out.weight", torch.zeros(11, 128, 1, 1)) == "main_no_wd"
    assert parameter_group_name("id_bank.conv.weight", torch.zeros(256, 11, 17, 17)) == "identity"
    assert parameter_group_name("id_bank.norm.weight", torch.zeros(256)) == "identity_no_wd"
    assert parameter_group_name("propagator.layers.0.linear_qv.weight", w2) == "main"


def test_swin_relative_position_tables_get_no_weight_decay():
    module = VOSLitModule(build_network("mavos_swinb"), total_steps=10)
    opt = module.configure_optimizers()["optimizer"]
    tables = {id(p) for n, p in module.net.named_parameters() if "relative_position_bias_table" in n}
    assert len(tables) == 22  # one per Swin block of the three stages
    for group in opt.param_groups:
        if any(id(p) in tables for p in group["params"]):
            assert group["weight_decay"] == 0.0


def test_identity_lr_is_zero_from_the_sequential_switch():
    fn = RecipeLRLambda(100, 1e-4, 1e-5, zero_from=50)
    assert fn(49) > 0 and fn(50) == 0.0 and fn(99) == 0.0
    assert RecipeLRLambda(100, 1e-4, 1e-5)(50) > 0


def test_a_run_resumed_with_more_steps_follows_the_new_schedule_and_a_backwards_one_is_refused():
    """4 steps saved, resumed with trainer.max_steps=8: the learning rate decays over 8 steps from there
    (Lightning restores the scheduler after the module's on_load_checkpoint, with what that leaves)."""
    from mavos.registry import ConfigError

    hp = dict(lr=1e-3, min_lr=1e-4, warmup_ratio=0.0, sequential_start=1.0)
    first = VOSLitModule(build_network("mavos_mbv2"), total_steps=4, **hp)
    sched = first.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(4):
        sched.optimizer.step()
        sched.step()
    checkpoint = {"lr_schedulers": [sched.state_dict()]}
    resumed = VOSLitModule(build_network("mavos_mbv2"), total_steps=8, **hp)
    resumed.on_load_checkpoint(checkpoint)
    again = resumed.configure_optimizers()["lr_scheduler"]["scheduler"]
    again.load_state_dict(checkpoint["lr_schedulers"][0])
    again.optimizer.step()
    again.step()   # step 5 of 8: poly decay, min_lr + (lr - min_lr) * (1 - 5 / 9) ** 0.9
    main = next(g for g in again.optimizer.param_groups if g["name"] == "main")
    assert main["lr"] == pytest.approx(1e-4 + 9e-4 * (4 / 9) ** 0.9)
    assert all(fn.total_steps == 8 for fn in again.lr_lambdas)
    with pytest.raises(ConfigError, match=r"model.lr=1e-05 is below model.min_lr=2e-05"):
        RecipeLRLambda(10, 1e-5, 2e-5)


class _Clips(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        masks = torch.zeros(3, 33, 33, dtype=torch.long)
        masks[:, 8:20, 6 + i: 18 + i] = 1
        return {"frames": torch.rand(3, 3, 33, 33, generator=g), "masks": masks,
                "num_objects": torch.tensor(1), "name": f"c{i}"}


class _Probe(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, module, *args):
        groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
        self.rows.append({"id_weight": module.net.id_bank.conv.weight.detach().clone(),
                          "id_grad": module.net.id_bank.conv.weight.grad,
                          "main_grad": module.net.decoder.conv_out.weight.grad,
                          "lr": groups["identity"]["lr"], "wd": groups["identity"]["weight_decay"],
                          "norm_lr": groups["identity_no_wd"]["lr"]})


def test_id_bank_is_frozen_once_predictions_feed_the_memory(tmp_path):
    """Step 0 trains the ID bank; from the switch (step 1 of 2) no gradient reaches it and lr = wd = 0."""
    torch.manual_seed(0)
    module = VOSLitModule(build_network("mavos_mbv2"), lr=1e-3, min_lr=1e-4, warmup_ratio=0.0, total_steps=2,
                          sequential_start=0.5, val_session={})
    before = module.net.id_bank.conv.weight.detach().clone()
    probe = _Probe()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[probe], default_root_dir=tmp_path,
                        limit_val_batches=0)
    trainer.fit(module, torch.utils.data.DataLoader(_Clips(), batch_size=1))
    first, second = probe.rows
    assert first["id_grad"] is not None and not torch.equal(first["id_weight"], before)  # trained at step 0
    assert second["id_grad"] is None                                                       # detached
    assert torch.equal(second["id_weight"], first["id_weight"])                           # unchanged
    assert second["lr"] == 0.0 and second["norm_lr"] == 0.0 and second["wd"] == 0.0
    assert first["wd"] == pytest.approx(module.hparams.weight_decay)
    assert second["main_grad"] is not None                                                 # the rest trains


def test_a_frozen_encoder_without_pretrained_weights_is_warned_about(caplog):
    """Frozen BatchNorm and stages are the recipe's for ImageNet or PRE-stage weights; with neither they stay
    random for the whole run, which is said once (and not said when weights, init_from or a resume are given, or
    nothing is frozen)."""
    from mavos.training.run import warn_frozen_random_encoder

    random_frozen = {"weights": None, "frozen_bn": True, "freeze_at": 2}
    with caplog.at_level("WARNING", logger="mavos.training.run"):
        assert warn_frozen_random_encoder(random_frozen, None, None)
    assert "frozen_bn=True and freeze_at=2 with no pretrained weights" in caplog.text
    assert not warn_frozen_random_encoder(dict(random_frozen, weights="weights/mobilenet_v2.pth"), None, None)
    assert not warn_frozen_random_encoder(random_frozen, "weights/pre.ckpt", None)
    assert not warn_frozen_random_encoder(random_frozen, None, "runs/a/checkpoints/last.ckpt")
    assert not warn_frozen_random_encoder({"weights": None, "frozen_bn": False, "freeze_at": 0}, None, None)


def test_ddp_that_reruns_the_command_line_is_refused_in_a_multirun():
    """Lightning's script-launched DDP starts the other ranks by running the command line again, which in a
    multirun starts the whole sweep again in each; refused there, by name, and allowed in a single run and for
    spawned processes."""
    import lightning as L

    from mavos.registry import ConfigError
    from mavos.training.run import check_multirun_launch

    rerun = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match=r"trainer.strategy=DDPStrategy with 2 processes in a multirun"):
        check_multirun_launch(rerun.strategy, "MULTIRUN")
    check_multirun_launch(rerun.strategy, "RUN")
    spawned = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False)
    check_multirun_launch(spawned.strategy, "MULTIRUN")
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    check_multirun_launch(single.strategy, "MULTIRUN")
