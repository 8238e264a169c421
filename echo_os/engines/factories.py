"""Factories named in the ENGINES table. Engines that hold a GPU model are cached by the engine itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echo_os.settings import Settings


def sdxl(settings: "Settings", reason: str):
    from echo_os.engines.sdxl import SDXLEngine

    return SDXLEngine(settings, name="sdxl", reason=reason)


def cpu(settings: "Settings", reason: str):
    from echo_os.engines.sdxl import SDXLEngine

    return SDXLEngine(settings, name="cpu", reason=reason, force_device="cpu")


def draft(settings: "Settings", reason: str):
    from echo_os.engines.draft import DraftEngine

    return DraftEngine(reason=reason)
