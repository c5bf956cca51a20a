"""What trains, without optimizers: the model's blocks, policies and their algebra,
selections, freezing and norm modes, summaries, and replacing a head.

Nothing here imports :mod:`freezeflow.schedules`, :mod:`freezeflow.unfreezer` or
:mod:`freezeflow.training`.
"""
