"""Interoperability: a run's model as a diffusers folder (export, model card, the class-conditional pipeline).

The other direction, starting from a diffusers model (``--init_from``), is part of training
(:mod:`clinalign.training.init_from`), because training sits below this package.
"""
