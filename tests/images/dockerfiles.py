"""A small reader of images/*/Dockerfile: stages, their instructions (continuations joined) and the final stage."""
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parents[2]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, rest)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def labels(self) -> dict[str, str]:
        out = {}
        for rest in self.all("LABEL"):
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                out[key] = value
        return out


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())  # line continuations
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def stages(name: str) -> tuple[list[tuple[str, str]], list[Stage]]:
    """(instructions before the first FROM, the stages) of images/<name>/Dockerfile."""
    preamble, out = [], []
    for keyword, rest in instructions(ROOT / "images" / name / "Dockerfile"):
        if keyword == "FROM":
            parts = rest.split()
            out.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        elif out:
            out[-1].instructions.append((keyword, rest))
        else:
            preamble.append((keyword, rest))
    return preamble, out
