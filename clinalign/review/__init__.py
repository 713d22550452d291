"""Web reviewer: pathologists judge synthetic images (plausible / implausible / unsure).

Modules: ``db`` (models, engine), ``ingest`` (batches, reviewers, concepts), ``queue`` (next item,
verdicts, undo, progress), ``agreement`` (Cohen's and Fleiss' kappa), ``stats`` (dashboard),
``export`` (feedback folders + votes.csv), ``labelstudio`` (Label Studio JSON), ``app`` (FastAPI),
``cli`` (the ``clinalign review`` commands).
"""
