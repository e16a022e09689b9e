"""Text files attached to a question: read (bounded) and put in the question, so a student can
ask about their code or notes. Anything else is named in a note under the answer rather than
silently ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import PurePosixPath

import discord

log = logging.getLogger(__name__)

TEXT_SUFFIXES = frozenset((
    ".txt", ".md", ".markdown", ".py", ".java", ".c", ".h", ".cpp", ".hpp", ".js", ".ts",
    ".html", ".css", ".json", ".yaml", ".yml", ".toml", ".csv", ".sql", ".sh", ".r", ".go",
    ".rs", ".kt", ".tex", ".ipynb", ".xml",
))  # fmt: skip
MAX_ATTACHMENT_BYTES = 20_000  # per file
MAX_ATTACHMENTS = 3


async def read_attachments(attachments: Sequence[discord.Attachment]) -> tuple[str, list[str]]:
    """(text to append to the question, notes for the footer)."""
    parts: list[str] = []
    skipped: list[str] = []
    for index, attachment in enumerate(attachments):
        name = attachment.filename
        suffix = PurePosixPath(name).suffix.lower()
        if index >= MAX_ATTACHMENTS:
            skipped.append(f"{name} (at most {MAX_ATTACHMENTS} files)")
        elif suffix not in TEXT_SUFFIXES:
            skipped.append(f"{name} (not a text file)")
        elif attachment.size > MAX_ATTACHMENT_BYTES:
            skipped.append(f"{name} (over {MAX_ATTACHMENT_BYTES // 1000} kB)")
        else:
            try:
                text = (await attachment.read()).decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(f"{name} (not UTF-8 text)")
                continue
            except discord.HTTPException as exc:
                log.warning("could not read attachment %s: %s", name, exc)
                skipped.append(f"{name} (could not be read)")
                continue
            fence = "````" if "```" in text else "```"
            parts.append(f"Attached file {name}:\n{fence}\n{text.rstrip()}\n{fence}")
    notes = [f"📎 not read: {', '.join(skipped)}"] if skipped else []
    return "\n\n".join(parts), notes
