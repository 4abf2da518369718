"""One redaction rule (shear_hub.redaction) for the report's command line, the report file and the model card."""

from __future__ import annotations

from shear_hub.redaction import redact, redact_argv, redact_command
from shear_hub.report import command_line

SECRET = "hf_abcdefghijklmnopqrstuvwxyz0123"
SHORT = "hf_abcdefghijklmnop"  # 16 characters after hf_: still a token shape


def test_token_shapes_and_env_token_are_hidden(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "my-own-secret-value")
    text = f"a {SECRET} b {SHORT} c my-own-secret-value d hf_short"
    assert redact(text) == "a *** b *** c *** d hf_short"


def test_flag_values_hidden_in_argv_and_in_a_command_string(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    argv = ["shear-hub", "push", "x", "--token", "plain-value", "--token=other", f"--note={SECRET}"]
    assert redact_argv(argv) == ["shear-hub", "push", "x", "--token", "***", "--token=***", "--note=***"]
    line = command_line(argv)
    assert "plain-value" not in line and "other" not in line and SECRET not in line
    # the card re-redacts the recorded line: the same rule on the string form
    assert redact_command("shear-hub push x --token plain-value --token=other " + SECRET) == \
        "shear-hub push x --token *** --token=*** ***"
