"""Stop strings over streamed text: cut exactly before the first stop string, and never
show text that might turn out to be the start of one."""

from __future__ import annotations

from typing import Sequence


class StopStrings:
    """``feed(piece)`` returns (text safe to show, stopped?)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self.pending + piece
        if not self.stops:
            return text, False
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return text[:min(hits)], True
        hold = 0  # longest tail of the text that is a proper prefix of some stop string
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        self.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        """Held-back text when generation ends for another reason."""
        text, self.pending = self.pending, ""
        return "" if self.stopped else text
