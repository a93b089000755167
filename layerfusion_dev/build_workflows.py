"""Write the UI-format example workflows (example_workflows/*.json) from their API twins
(example_workflows/api/*.json), using a real server's /object_info. Run after editing a twin:

    .venv/bin/python -m layerfusion_dev.build_workflows
"""

from __future__ import annotations

import json

from layerfusion_dev.comfy_server import ComfyServer  # noqa: E402
from layerfusion_dev.ui_workflows import api_to_ui  # noqa: E402
from layerfusion_dev.workflows import API_DIR  # noqa: E402


def main() -> int:
    with ComfyServer(test_nodes=False) as server:
        info = server.object_info()
    for twin in sorted(API_DIR.glob("*.json")):
        ui = api_to_ui(json.loads(twin.read_text()), info)
        target = API_DIR.parent / twin.name
        target.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"wrote {target.relative_to(API_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
