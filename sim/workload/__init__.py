"""Requests to replay: the JSONL trace format (``trace``), other tools' traces (``importers``), reshaping
(``transforms``), the seeded synthetic generator (``generator``), statistics (``stats``) and the filter of
requests a deployment can serve (``servable``)."""
