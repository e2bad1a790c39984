"""``python <path-to-podkit> serve``: the standalone control plane (see standalone.py);
``python <path-to-podkit> bootstrap <manifest>``: download a pod's models (jobs/bootstrap.py).

Run as a directory, this file is top-level code, so it first registers the folder as the package
``podkit`` (whatever the checkout is called) and then hands over to ``podkit.standalone``.
"""

import importlib.util
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location(
        "podkit", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load PodKit from {root}")
    package = importlib.util.module_from_spec(spec)
    sys.modules["podkit"] = package
    spec.loader.exec_module(package)
    from podkit.standalone import main

    raise SystemExit(main(sys.argv[1:]))
