"""Packed training: a sweep's runs that differ only in their seed, trained as one model.

``layers``  packed layers (batched Linear, grouped Conv2d, per-replica norms and noise);
``model``   K single models -> one ``PackedNet``, the single models kept as views of it;
``loop``    ``train_pack``: the training loop, one run directory per replica;
``plan``    which of a sweep's jobs are packed together, and why others are not (torch-free);
``job``     a sweep job that trains its pack (the hook bnexp/sweep.py calls).
"""
