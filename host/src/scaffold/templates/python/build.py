"""Builds {{name}}.wasm: installs componentize-py (pinned, from PyPI) into .venv/ beside
this file on first use, then builds app.py against wit/ into a component."""

import os
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
TOOL = os.path.join(BIN, "componentize-py")
REQUIREMENT = "componentize-py=={{componentize_py}}"


def main():
    if not os.path.exists(TOOL):
        venv.create(VENV, with_pip=True)
        subprocess.run([os.path.join(BIN, "python"), "-m", "pip", "install", "--quiet", REQUIREMENT], check=True)
    out = os.path.join(HERE, "{{name}}.wasm")
    subprocess.run([TOOL, "-d", os.path.join(HERE, "wit"), "-w", "plugin", "componentize", "app", "-p", HERE, "-o", out], check=True)
    print(out)


if __name__ == "__main__":
    sys.exit(main())
