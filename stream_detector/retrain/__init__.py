"""The retrainer: a bounded window of recent clean traffic → train → calibrate → gate → registry.

``window.py`` (what may be trained on), ``job.py`` (one training run), ``gate.py`` (promotion
rules), ``drift.py`` (PSI/KS of live scores against a model's reference), ``service.py`` (the
long-running process and ``retrain --once``). See docs/retraining.md.
"""
