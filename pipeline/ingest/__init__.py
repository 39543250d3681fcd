"""Importers: public datasets and a shop's own events file into the ``shop`` contract.

``read_dataset(fmt, path)`` parses without a database; ``import_dataset(url, fmt, path)`` loads with COPY.
Every valid row loads and every invalid one is quarantined with its reasons (see ``base``).
"""

from pipeline.ingest.importer import FORMATS, ImportResult, import_dataset, read_dataset

__all__ = ["FORMATS", "ImportResult", "import_dataset", "read_dataset"]
