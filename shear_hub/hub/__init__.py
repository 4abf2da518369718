"""Publishing: model cards (README.md + width_per_layer.png) and pushes to the Hugging Face Hub.

Imports are lazy so that ``shear-hub push`` does not pay for torch or matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .card import render_card
    from .push import push_folder

__all__ = ["render_card", "push_folder"]


def __getattr__(name: str):
    if name == "render_card":
        from .card import render_card

        return render_card
    if name == "push_folder":
        from .push import push_folder

        return push_folder
    raise AttributeError(name)
