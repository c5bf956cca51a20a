"""Training: :func:`~freezeflow.fit`, its run state and history, callbacks, checkpoints and
the feature cache of frozen blocks.

The top layer of the library below the integrations and the command line.
"""
