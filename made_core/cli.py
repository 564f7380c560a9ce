"""What the project's command lines share."""

from __future__ import annotations

import argparse
import copy
import textwrap


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default, except None, whose meaning each help text states."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default not in (None, argparse.SUPPRESS):
            action = copy.copy(action)  # argparse skips the default of an option without help text
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Never break inside a hyphenated value such as "test-ensemble".
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        return (super()._get_help_string(action) or "") if action.default is not None else (action.help or "")
