"""The built-in Dassl mirror: the behaviours trainers rely on (reference: dassl_ecosystem.md)."""
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli


def test_backend_switch_builtin_and_errors():
    out = run_cli(["python", "-c", "import toolbox; print(toolbox.BACKEND)"], env={"TOOLBOX": "builtin"})
    assert out.returncode == 0 and out.stdout.strip() == "builtin"
    # auto: dassl is not installed in the test environment, so the mirror is used and the reason kept
    out = run_cli(["python", "-c", "import toolbox; print(toolbox.BACKEND, toolbox.DASSL_IMPORT_ERROR is not None)"],
                  env={"TOOLBOX": "auto"})
    assert out.returncode == 0 and out.stdout.strip() == "builtin True"
    out = run_cli(["python", "-c", "import toolbox"], env={"TOOLBOX": "dassl"})
    assert out.returncode != 0 and "TOOLBOX=dassl but the dassl package cannot be imported" in out.stderr
    out = run_cli(["python", "-c", "import toolbox"], env={"TOOLBOX": "dasl"})
    assert out.returncode != 0 and "TOOLBOX='dasl' is not recognised" in out.stderr


def test_registry_rejects_duplicates_and_suggests_names():
    from fairclip.toolbox import Registry
    from fairclip.toolbox.builtin.utils import check_availability

    reg = Registry("X")

    @reg.register()
    class Foo:
        pass

    assert reg.get("Foo") is Foo and reg.registered_names() == ["Foo"]
    with pytest.raises(KeyError):
        reg.register(Foo)
    with pytest.raises(ValueError, match=r"do you mean \[Foo\]"):
        check_availability("Fooo", reg.registered_names())


def _optim_cfg(**kw):
    from fairclip.toolbox import get_cfg_default

    cfg = get_cfg_default()
    for k, v in kw.items():
        setattr(cfg.OPTIM, k, v)
    return cfg.OPTIM


def test_warmup_cosine_trace_matches_dassl_coop_recipe():
    """CoOp: sgd 0.002, cosine, 1 constant warmup epoch at 1e-5, recount, 5 epochs (trace verified on Dassl)."""
    from fairclip.toolbox import build_lr_scheduler, build_optimizer

    ocfg = _optim_cfg(NAME="sgd", LR=0.002, LR_SCHEDULER="cosine", MAX_EPOCH=5, WARMUP_EPOCH=1,
                      WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], ocfg)
    sched = build_lr_scheduler(opt, ocfg)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(lrs, [1e-5, 0.002, 0.00181, 0.00131, 0.00069], atol=5e-6)


def test_warmup_scheduler_state_survives_safe_torch_load():
    """Dassl's warmup state pickles the successor object (fails under weights_only=True); ours does not."""
    from fairclip.toolbox import build_lr_scheduler, build_optimizer

    ocfg = _optim_cfg(NAME="adamw", LR=1e-3, LR_SCHEDULER="cosine", MAX_EPOCH=4, WARMUP_EPOCH=1,
                      WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-6)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], ocfg)
    sched = build_lr_scheduler(opt, ocfg)
    for _ in range(3):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer([torch.nn.Parameter(torch.zeros(1))], ocfg)
    sched2 = build_lr_scheduler(opt2, ocfg)
    opt2.load_state_dict(state["optimizer"])  # the resume path restores both, as Dassl does
    sched2.load_state_dict(state["scheduler"])
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert sched.get_last_lr() == pytest.approx(sched2.get_last_lr())


def test_checkpoint_layout_pointer_and_atomic_write(tmp_path):
    from fairclip.toolbox import load_checkpoint, resume_from_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 3,
             "optimizer": opt.state_dict(), "scheduler": None, "val_result": None}
    save_checkpoint(state, str(tmp_path / "model"))
    files = sorted(os.listdir(tmp_path / "model"))
    assert files == ["checkpoint", "model.pth.tar-3"]  # no temp files left behind
    assert (tmp_path / "model" / "checkpoint").read_text().strip() == "model.pth.tar-3"
    ckpt = load_checkpoint(str(tmp_path / "model" / "model.pth.tar-3"))
    assert set(ckpt["state_dict"]) == {"weight", "bias"}  # "module." stripped
    other = torch.nn.Linear(3, 2)
    assert resume_from_checkpoint(str(tmp_path / "model"), other, None, None) == 3
    assert torch.equal(other.weight, model.weight)


def test_classification_evaluator_metrics(capsys):
    from fairclip.toolbox import build_evaluator, get_cfg_default

    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = True
    ev = build_evaluator(cfg, lab2cname={0: "a", 1: "b", 2: "c"})
    gt = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    ev.process(torch.nn.functional.one_hot(pred, 3).float(), gt)
    res = ev.evaluate()
    assert list(res)[0] == "accuracy" and res["accuracy"] == pytest.approx(100 * 4 / 6)
    # per-class F1: a: p=1/2 r=1/2 -> .5; b: p=2/3 r=1 -> .8; c: p=1 r=1/2 -> 2/3
    assert res["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3)
    assert res["perclass_accuracy"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)
    assert "* accuracy: 66.7%" in capsys.readouterr().out


def test_test_transform_is_clip_preprocessing():
    """With CLIP's mean/std and bicubic, the test pipeline equals CLIP's own preprocessing."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.clip import _transform

    from fairclip.toolbox import build_transform, get_cfg_default

    cfg = get_cfg_default()
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.PIXEL_MEAN = [0.48145466, 0.4578275, 0.40821073]
    cfg.INPUT.PIXEL_STD = [0.26862954, 0.26130258, 0.27577711]
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (300, 260, 3), dtype=np.uint8))
    ours = build_transform(cfg, is_train=False)(img)
    theirs = _transform(224)(img)
    assert torch.allclose(ours, theirs, atol=1e-6)
    train = build_transform(cfg, is_train=True)(img)
    assert train.shape == (3, 224, 224)


def test_unknown_config_key_is_rejected_by_yacs():
    from fairclip.toolbox import get_cfg_default

    cfg = get_cfg_default()
    with pytest.raises(AssertionError, match="Non-existent key: OPTIM.LRR"):
        cfg.merge_from_list(["OPTIM.LRR", "0.1"])


@pytest.mark.parametrize("warmup_type,recount", [("constant", True), ("linear", True), ("constant", False)])
def test_trainer_epoch_schedule_matches_the_dassl_trace(warmup_type, recount):
    """trainers/_schedules.py (plain torch, used on both backends) reproduces Dassl's cosine+warmup."""
    from fairclip.toolbox import build_lr_scheduler, build_optimizer
    from fairclip.trainers._schedules import epoch_scheduler

    ocfg = _optim_cfg(NAME="sgd", LR=0.002, LR_SCHEDULER="cosine", MAX_EPOCH=6, WARMUP_EPOCH=2,
                      WARMUP_TYPE=warmup_type, WARMUP_CONS_LR=1e-5, WARMUP_MIN_LR=1e-5, WARMUP_RECOUNT=recount)
    traces = []
    for build in (build_lr_scheduler, epoch_scheduler):
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], ocfg)
        sched = build(opt, ocfg)
        lrs = []
        for _ in range(6):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        traces.append(lrs)
    assert np.allclose(traces[0], traces[1], rtol=1e-6, atol=1e-9)
