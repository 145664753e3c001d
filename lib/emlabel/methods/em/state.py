"""Where the EM loop keeps its state beside the models: reviews, iteration, ROC."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class EMFiles:
    """The EM loop's files in the model folder."""

    model_dir: Path

    @property
    def reviews(self) -> Path:
        return self.model_dir / "em_reviews.json"

    @property
    def state(self) -> Path:
        return self.model_dir / "em_state.json"

    @property
    def roc_json(self) -> Path:
        return self.model_dir / "em_roc.json"

    @property
    def roc_png(self) -> Path:
        return self.model_dir / "em_roc.png"

    @staticmethod
    def read(path: Path, default: Any) -> Any:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return default

    def iteration(self) -> int:
        """The last finished EM iteration (0 before any)."""
        return int(self.read(self.state, {}).get("iteration", 0))

    def load_reviews(self) -> list[dict[str, Any]]:
        return list(self.read(self.reviews, []))
