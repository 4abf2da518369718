"""What counts as a credential, and how it is hidden: the one rule for reports, command lines and model cards.

Hidden: the value of the current ``HF_TOKEN``, anything shaped like a Hugging Face token (``hf_`` and 16 or more
letters or digits), and the value after a secret flag (``--token VALUE`` / ``--token=VALUE``).
"""

from __future__ import annotations

import os
import re

MASK = "***"
SECRET_FLAGS = ("--token",)
HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{16,}")
_FLAG_VALUE = re.compile(r"(" + "|".join(re.escape(f) for f in SECRET_FLAGS) + r")(=|\s+)\S+")


def redact(text: str) -> str:
    """``text`` without the current HF_TOKEN value or anything that looks like a Hugging Face token."""
    token = os.environ.get("HF_TOKEN")
    if token:
        text = text.replace(token, MASK)
    return HF_TOKEN_PATTERN.sub(MASK, text)


def redact_argv(argv: list[str]) -> list[str]:
    """A command's arguments with the value of every secret flag masked, then ``redact``-ed."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if arg in SECRET_FLAGS:
            hide_next = True
        elif any(arg.startswith(f + "=") for f in SECRET_FLAGS):
            arg = arg.split("=", 1)[0] + "=" + MASK
        out.append(redact(arg))
    return out


def redact_command(command: str) -> str:
    """A command line as one string (e.g. a report's "command"): secret flag values masked, then ``redact``-ed."""
    return redact(_FLAG_VALUE.sub(r"\1\2" + MASK, command))
