"""Stand-in for UPL's default config: Dassl's defaults (here our mirror of them)."""
from fairclip.toolbox import get_cfg_default as _dassl_defaults


def get_cfg_default():
    return _dassl_defaults()
