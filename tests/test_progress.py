"""The training status line: redrawn in place on a terminal, silent elsewhere (plain log lines only)."""

from __future__ import annotations

import io

from shared.core.progress import TrainProgress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_redrawn_status_line():
    out = FakeTTY()
    p = TrainProgress(total_steps=100, max_seconds=0.0, batch_tokens=1000, stream=out, every_s=0.0)
    p.update(10, 4.25, 5.0)
    p.update(20, 4.00, 10.0)
    text = out.getvalue()
    assert text.count("\r\033[K") == 2
    # 20 steps x 1000 tokens in 10 s; 80 steps left at 0.5 s each.
    assert "step 20/100 loss 4.0000 2,000 tok/s elapsed 10s ETA 40s" in text
    p.close()
    assert out.getvalue().endswith("\r\033[K")


def test_eta_respects_the_wallclock_cap():
    p = TrainProgress(total_steps=1000, max_seconds=30.0, batch_tokens=1, stream=io.StringIO())
    assert p.eta(step=10, elapsed=10.0) == 20.0  # the cap comes before the step budget


def test_pipe_gets_no_control_characters(capsys):
    out = io.StringIO()  # not a terminal
    p = TrainProgress(total_steps=10, max_seconds=0.0, batch_tokens=8, stream=out, every_s=0.0)
    p.update(1, 5.0, 1.0)
    p.write("step 1/10 train_loss 5.0000")
    p.close()
    assert out.getvalue() == ""
    assert capsys.readouterr().out == "step 1/10 train_loss 5.0000\n"


def test_a_plain_progress_line_has_rate_and_eta_and_the_final_line_prints_once(monkeypatch):
    import shared.core.progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    bar = progress.Progress("eval ttt-lora", total=1000, unit="tokens", stream=out, every_s=5.0)
    clock[0] += 6.0
    bar.update(300)   # a line: 300 tokens in 6 s, 50/s, 700 left -> 14 s
    clock[0] += 8.0
    bar.update(700)   # the last update prints the final line ...
    bar.close()       # ... which close does not print again
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == ["eval ttt-lora: 300/1,000 tokens (30%), 6.0s, 50 tokens/s, ETA 14s",
                     "eval ttt-lora: 1,000/1,000 tokens (100%), 14.0s, 71 tokens/s"]


def test_a_short_phase_with_min_s_prints_nothing_and_quiet_silences_everything():
    import shared.core.progress as progress

    out = io.StringIO()
    with progress.Progress("eval flat", total=10, stream=out, min_s=5.0) as bar:
        bar.update(10)
    assert out.getvalue() == ""
    progress.set_quiet(True)
    try:
        with progress.Progress("encode", total=3, stream=out) as bar:
            bar.update(3)
        progress.Phases("parity", 2, stream=out).start("export")
    finally:
        progress.set_quiet(False)
    assert out.getvalue() == ""
    progress.Phases("parity", 2, stream=out).start("export")
    assert out.getvalue().startswith("parity [1/2]: export (")


def test_a_long_evaluation_reports_progress_by_mode_once_per_line(tiny_data, capsys, monkeypatch):
    """run_eval reports the sliding pass (through the ledger) and the flat pass (through val_batches)."""
    import numpy as np
    import pytest

    pytest.importorskip("torch")
    from dataclasses import replace

    import shared.core.progress as progress
    from cuda_train.backend import session_from
    from shared.core.spec import init_params
    from shared.data.dataset import open_dataset
    from shared.eval.driver import run_eval
    from tests.conftest import tiny_config

    monkeypatch.setattr(progress.Progress.__init__, "__defaults__",
                        ("it", 0.0, False, None, True, 0.0))  # every_s=0, min_s=0: every update is a line
    cfg = tiny_config()
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, 512)
    session = session_from(cfg, init_params(cfg.model, 1))
    for mode in ("sliding", "flat"):
        c = replace(cfg, eval=replace(cfg.eval, mode=mode, stride=32))
        capsys.readouterr()
        run_eval(session, c, ds.val_tokens, ds.tables)
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith(f"eval {mode}:")]
        assert len(err) >= 2 and all("tokens/s" in x for x in err), err
        assert err[-1].startswith(f"eval {mode}: 2,048/2,048 tokens (100%)") and len(set(err)) == len(err)
        assert any("ETA" in x for x in err[:-1])
    assert np.isfinite(run_eval(session, cfg, ds.val_tokens, ds.tables).result.nats)
