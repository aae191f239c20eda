"""Front-end workers never import torch: they start fast and stay light."""

import subprocess
import sys


def test_importing_the_frontend_worker_does_not_import_torch():
    code = ("import sys; import flint.frontend.server, flint.frontend.worker, flint.client, flint.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
