"""Write the UI-format example workflows (example_workflows/*.json) from their API twins
(example_workflows/api/*.json), using a real server's /object_info. Where the host lacks a node a workflow
uses (Create Layered Image on 0.3.75), its emulated schema (`layerfusion_dev.native_nodes`) stands in.
Run after editing a twin:

    .venv/bin/python -m layerfusion_dev.build_workflows
"""

from __future__ import annotations

import json
import logging

from layerfusion_dev.comfy_server import ComfyServer  # noqa: E402
from layerfusion_dev.host import import_comfy  # noqa: E402
from layerfusion_dev.ui_workflows import api_to_ui  # noqa: E402
from layerfusion_dev.workflows import API_DIR  # noqa: E402

log = logging.getLogger("layerfusion.build_workflows")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with ComfyServer(test_nodes=False) as server:
        info = server.object_info()
    import_comfy()  # the emulated schemas of ComfyUI's own layer nodes, where this host has none
    from layerfusion_dev.native_nodes import object_info_for_missing

    info = {**object_info_for_missing(info), **info}
    for twin in sorted(API_DIR.glob("*.json")):
        ui = api_to_ui(json.loads(twin.read_text()), info)
        target = API_DIR.parent / twin.name
        target.write_text(json.dumps(ui, indent=1) + "\n")
        log.info("wrote %s", target.relative_to(API_DIR.parent.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
