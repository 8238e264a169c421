"""Problems found in story files, gathered so the user sees every one of them at once.

Parsing never stops at the first bad cell: each reader adds Problems to a ProblemList and the planner
raises one StoryError at the end, whose message is a count line followed by one line per problem,
for example `story.csv row 3, column characters: unknown character id 'bob' (known: keeper)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from echo_os.errors import UsageError

# A file with thousands of bad rows still gives a readable message: the first ones, then a count.
MAX_LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one place of one file."""

    file: str
    message: str
    row: int | None = None
    column: str | None = None
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
        if self.line is not None:
            where += f" line {self.line}"
        if self.column is not None:
            where += f", column {self.column}"
        if self.key is not None:
            where += f", key {self.key}"
        return f"{where}: {self.message}"


@dataclass
class ProblemList:
    problems: list[Problem] = field(default_factory=list)

    def add(self, file: str, message: str, **where) -> None:
        self.problems.append(Problem(file=file, message=message, **where))

    def extend(self, other: "ProblemList") -> None:
        self.problems.extend(other.problems)

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def raise_if_any(self) -> None:
        if self.problems:
            raise StoryError(self.problems)


class StoryError(UsageError):
    """Every problem in a story's files; nothing renders from an invalid storyboard (exit 2)."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(format_problems(self.problems))


def format_problems(problems: list[Problem]) -> str:
    count = len(problems)
    noun = "problem" if count == 1 else "problems"
    lines = [f"{count} {noun} in the story files; nothing was rendered:"]
    lines += [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if count > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {count - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)
