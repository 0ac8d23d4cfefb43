"""Stand-in for UPL's upl_train.py: only extend_cfg, which the parity script reads."""
from yacs.config import CfgNode as CN


def extend_cfg(cfg):
    cfg.TRAINER.UPLTrainer = CN()
    cfg.TRAINER.UPLTrainer.N_CTX = 16
    cfg.TRAINER.UPLTrainer.CSC = False
    cfg.TRAINER.UPLTrainer.CTX_INIT = ""
    cfg.TRAINER.UPLTrainer.PREC = "fp16"
    cfg.TRAINER.UPLTrainer.CLASS_TOKEN_POSITION = "end"
