"""Helpers shared by the data tests (a module with a unique name, so test files can import it)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the river town market science music history game player season film album song war "
         "army city island church school language model bridge engine novel king queen road").split()


def write_text_file(path: Path, n_paragraphs: int, seed: int = 0) -> Path:
    """WikiText-like raw text: headings and one paragraph per line, CRLF line ends."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_paragraphs):
        if i % 5 == 0:
            lines.append(f" = Article {i} = ")
        lines.append(" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + f" {i} .")
    path.write_bytes("\r\n".join(lines).encode("utf-8") + b"\r\n")
    return path
