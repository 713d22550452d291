"""Web reviewer: pathologists judge synthetic images (plausible / implausible / unsure).

Modules: ``db`` (models, engine, ``Store``), ``commits`` (SQLite group commit), ``ingest``
(batches, reviewers, concepts), ``queue`` (next item, verdicts, undo, progress), ``agreement``
(Cohen's and Fleiss' kappa), ``stats`` (dashboard), ``export`` (feedback folders + votes.csv),
``labelstudio`` (Label Studio JSON), ``images`` (images as served), ``auth`` (tokens, CSRF rules),
``middleware`` (the gate in front of every route), ``app`` (assembles the FastAPI app from the
routers ``pages``, ``api_reviewer`` and ``api_admin``; shared bits in ``web``), ``serverlog``
(access log without tokens), ``cli`` (the ``clinalign review`` commands).
"""
