#!/usr/bin/env python3
"""The PyPI PyTorch peer's Python: creates on first use a venv with scripts/peers/requirements-torch.txt
(`pip install -r`, the full wheel as a user gets it) and prints its interpreter's path.

Where: $VASOMIM_TORCH_VENV, else ~/.cache/vasomim/torch-venv (outside the checkout: it is about 5 GB).
A venv whose torch does not import is rebuilt. Progress goes to stderr; stdout is the path only.

usage: python3 scripts/peers/torch_venv.py [--check]   (--check: print the path only if it exists and works)
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REQ = os.path.join(HERE, "requirements-torch.txt")


def venv_dir():
    return os.environ.get("VASOMIM_TORCH_VENV") or os.path.join(os.path.expanduser("~"), ".cache", "vasomim", "torch-venv")


def works(py):
    probe = "import torch; x = torch.ones(8, 8); assert float((x @ x).sum()) == 512.0; print(torch.__version__)"
    return os.path.exists(py) and subprocess.run([py, "-c", probe], capture_output=True).returncode == 0


def main():
    d = venv_dir()
    py = os.path.join(d, "bin", "python")
    if works(py):
        print(py)
        return
    if "--check" in sys.argv[1:]:
        sys.exit(1)
    print(f"torch_venv: creating {d} with {os.path.relpath(REQ)} (several GB; once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", d], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", REQ],
                   check=True, stdout=sys.stderr)
    if not works(py):
        sys.exit(f"torch_venv: torch in {d} does not import or compute on the CPU")
    print(py)


if __name__ == "__main__":
    main()
