"""bnexp's SLURM launcher as a Hydra plugin (Hydra instantiates launchers only from the
``hydra_plugins`` namespace): configs/hydra/launcher/submitit_slurm.yaml names it. The code is
in bnexp/slurm.py. Without hydra-submitit-launcher (``pip install 'bnexp[slurm]'``) this
module defines nothing, and bnexp says what to install."""

try:
    from bnexp.slurm import SlurmLauncher
except ImportError:  # hydra-submitit-launcher not installed
    pass
else:

    class BnexpSlurmLauncher(SlurmLauncher):
        """bnexp.slurm.SlurmLauncher, registered where Hydra looks for launchers."""
