"""Run by Krita's kritarunner, not by pytest: ``kritarunner -s krita_flatten -f main IN OUT [IN OUT ...]``
(with this folder on PYTHONPATH and QT_QPA_PLATFORM=offscreen). Opens each layered file IN as Krita
does, and writes its flattened projection to OUT: a header line ``width height`` then the raw 8-bit
pixels in Krita's order (BGRA). Each layer's name and blend mode go to stderr, one line per file."""

from __future__ import annotations

import sys


def main(args: list[str]) -> None:
    from krita import Krita

    krita = Krita.instance()
    for source, target in zip(args[0::2], args[1::2]):
        document = krita.openDocument(source)
        document.setBatchmode(True)
        document.waitForDone()
        document.refreshProjection()
        document.waitForDone()
        width, height = document.width(), document.height()
        modes = [(node.name(), node.blendingMode(), node.visible()) for node in document.rootNode().childNodes()]
        sys.stderr.write(f"krita_flatten {source} {document.colorModel()} {document.colorDepth()} {modes}\n")
        with open(target, "wb") as out:
            out.write(f"{width} {height}\n".encode() + bytes(document.pixelData(0, 0, width, height)))
        document.close()
