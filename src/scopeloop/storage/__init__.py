"""Run folders: tables, image stacks and provenance written as a run goes."""

from ._recordings import Recording, Series, read_recording
from ._run_folder import file_sha256, new_run_folder, write_json
from ._stacks import StackWriter
from ._tables import CsvTable

__all__ = [
    "CsvTable",
    "Recording",
    "Series",
    "StackWriter",
    "file_sha256",
    "new_run_folder",
    "read_recording",
    "write_json",
]
