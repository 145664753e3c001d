"""Where the EM loop keeps its state beside the models: reviews, iteration, ROC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class EMFiles:
    """The EM loop's files in the model folder."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self.reviews = self.model_dir / "em_reviews.json"
        self.state = self.model_dir / "em_state.json"
        self.roc_json = self.model_dir / "em_roc.json"
        self.roc_png = self.model_dir / "em_roc.png"

    @staticmethod
    def read(path: Path, default: Any) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return default

    def iteration(self) -> int:
        """The last finished EM iteration (0 before any)."""
        return int(self.read(self.state, {}).get("iteration", 0))

    def load_reviews(self) -> list[dict[str, Any]]:
        return list(self.read(self.reviews, []))
