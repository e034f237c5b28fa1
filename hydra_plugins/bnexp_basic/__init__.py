"""bnexp's basic sweeper and launcher as Hydra plugins (Hydra instantiates them only from the
``hydra_plugins`` namespace): configs/hydra/{sweeper,launcher}/bnexp_basic.yaml name them, and
configs/config.yaml makes them the default. The code is in bnexp/pack/launch.py: Hydra's basic
sweeper and launcher, without composing the jobs a pack's leader trains."""

from bnexp.pack.launch import PackLauncher, PackSweeper


class BnexpBasicLauncher(PackLauncher):
    """bnexp.pack.launch.PackLauncher, registered where Hydra looks for launchers."""


class BnexpBasicSweeper(PackSweeper):
    """bnexp.pack.launch.PackSweeper, registered where Hydra looks for sweepers."""
