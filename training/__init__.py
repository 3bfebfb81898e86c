"""admpff.training: ADMPFF-Net, the MGJ loss, data sets, training and evaluation.

Kept import-light: ``admpff.training.evaluation`` and the data-set readers work without torch.
"""
