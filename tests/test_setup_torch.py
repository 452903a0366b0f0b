"""`make setup`'s choice of torch build per machine kind (shared/tools/setup_torch.py), without installing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared.tools import setup_torch as st

PY = "/venv/bin/python"


def test_machine_kinds():
    assert st.machine_kind("Linux", has_gpu=False) == "linux-cpu"
    assert st.machine_kind("Linux", has_gpu=True) == "linux-gpu"
    assert st.machine_kind("Darwin", has_gpu=False) == "macos"
    assert st.machine_kind("Windows", has_gpu=True) == "other"


def test_linux_without_a_gpu_gets_the_cpu_index_then_falls_back_to_the_default_index():
    p = st.plan(PY, "linux-cpu", cpu_index_reachable=True, version="2.13.0")
    assert p.commands == [
        [PY, "-m", "pip", "install", "--quiet", "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"],
        [PY, "-m", "pip", "install", "--quiet", "torch==2.13.0"],
    ]
    ran, said = [], []

    def pip(cmd):  # the CPU index fails (unreachable mid-install): the default index is tried next
        ran.append(cmd)
        return 1 if "--index-url" in cmd else 0

    assert st.install(p, run=pip, say=said.append) == 0
    assert ran == p.commands
    assert any("CPU index failed" in s for s in said) and any(s.endswith("install --quiet torch==2.13.0") for s in said)


def test_an_unreachable_cpu_index_goes_straight_to_the_default_index_and_says_so():
    p = st.plan(PY, "linux-cpu", cpu_index_reachable=False)
    assert p.commands == [[PY, "-m", "pip", "install", "--quiet", f"torch=={st.CPU_VERSION}"]]
    assert "unreachable" in p.notes[0]


def test_a_gpu_box_and_a_mac_get_the_default_build():
    for kind in ("linux-gpu", "macos"):
        p = st.plan(PY, kind, cpu_index_reachable=True)
        assert p.commands == [[PY, "-m", "pip", "install", "--quiet", "torch"]]
        assert all("--index-url" not in c for c in p.commands[0])


def test_a_failing_install_returns_pips_code():
    p = st.plan(PY, "linux-gpu", cpu_index_reachable=False)
    assert st.install(p, run=lambda cmd: 3, say=lambda s: None) == 3


def test_dry_run_prints_and_installs_nothing():
    script = Path(st.__file__)
    out = subprocess.run([sys.executable, str(script), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("setup: ") and "pip install --quiet torch" in out.stdout
