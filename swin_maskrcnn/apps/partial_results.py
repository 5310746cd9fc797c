"""``predict``'s results written as they come, so that a stopped or killed run keeps them.

While ``swin-maskrcnn predict --out preds.json`` runs, every image's detections are appended to
``preds.json.partial`` as one JSON line (and flushed) the moment they are computed::

    {"swin_maskrcnn_predict_partial": 1, "checkpoint": "...", "settings": {...}}     <- header
    {"image": "photos/a.jpg", "file_name": "a.jpg", "results": [ ...COCO results... ]}
    ...

At the end the complete COCO results list is written to ``preds.json`` (atomically) and the
partial file is removed; after a Ctrl-C, a SIGTERM or a kill it stays, and ``--resume`` reads it,
skips the images it already holds and appends the rest. A last line cut short by a kill is
ignored. Resuming with other prediction settings (checkpoint, thresholds, scale, batch size,
pixel limit) than the partial file's is refused, since the results would mix two settings.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any, Optional

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["PartialResults", "partial_path"]

_MAGIC = "swin_maskrcnn_predict_partial"


def partial_path(out: os.PathLike | str) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


class PartialResults:
    """The partial file of ``out``: :meth:`start` (fresh or resumed), :meth:`add` per image, then
    :meth:`finish` (complete) or :meth:`close` (stopped: the partial file stays for ``--resume``)."""

    def __init__(self, out: os.PathLike | str, checkpoint: str, settings: dict[str, Any]) -> None:
        self.out = Path(out)
        self.path = partial_path(out)
        self.header = {_MAGIC: 1, "checkpoint": str(checkpoint), "settings": settings}
        self.done: dict[str, list[dict]] = {}  # image path -> its COCO results, in file order
        self._file: Optional[IO[str]] = None

    def start(self, resume: bool) -> dict[str, list[dict]]:
        """Open for appending; returns the images already done (empty unless resuming)."""
        if self.path.exists() and not resume:
            n = sum(1 for _ in open(self.path, encoding="utf-8")) - 1
            raise ConfigError(f"{self.path} holds the results of {max(n, 0)} images of an interrupted predict: "
                              "pass --resume to continue it, or delete it to start again")
        if resume and self.path.exists():
            self._read()
            self._file = open(self.path, "a", encoding="utf-8")
            log.info("--resume: %d images already predicted in %s", len(self.done), self.path)
        else:
            if resume:
                log.info("--resume: no %s, starting with the first image", self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")
            self._write_line(self.header)
        return dict(self.done)

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            header = None
        if not isinstance(header, dict) or header.get(_MAGIC) != 1:
            raise ConfigError(f"--resume: {self.path} is not a partial results file of swin-maskrcnn predict")
        for key in ("checkpoint", "settings"):
            if header.get(key) != self.header[key]:
                raise ConfigError(f"--resume: {self.path} was made with {key} {header.get(key)}, this command has "
                                  f"{self.header[key]}; use the same options, or delete the file to start again")
        complete = lines[1:]
        if complete and complete[-1] == "":
            complete = complete[:-1]
        for n, line in enumerate(complete):
            try:
                entry = json.loads(line)
                self.done[str(entry["image"])] = list(entry["results"])
            except (json.JSONDecodeError, KeyError, TypeError):
                if n == len(complete) - 1:  # the line a kill cut short: that image is predicted again
                    log.warning("--resume: %s ends with an incomplete line (a run killed while writing it): ignored",
                                self.path)
                    kept = "\n".join(lines[: n + 1]) + "\n"  # the header and the complete lines
                    with open(self.path, "r+b") as f:  # drop the cut line before appending
                        f.truncate(len(kept.encode("utf-8")))
                    break
                raise ConfigError(f"--resume: line {n + 2} of {self.path} is not a results line") from None

    def _write_line(self, obj: Any) -> None:
        assert self._file is not None
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()  # in the OS's hands now: a killed process loses nothing written

    def add(self, image: str, file_name: str, results: list[dict]) -> None:
        self.done[str(image)] = results
        self._write_line({"image": str(image), "file_name": file_name, "results": results})

    def close(self) -> None:
        if self._file is not None:
            try:
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
                self._file = None

    def finish(self, order: list[str]) -> list[dict]:
        """Write the COCO results of the images in ``order`` (those done) to ``out``; remove the partial file."""
        from ..coco_results import save_results_json

        self.close()
        results = [r for image in order for r in self.done.get(image, [])]
        save_results_json(results, self.out)
        self.path.unlink()
        return results
