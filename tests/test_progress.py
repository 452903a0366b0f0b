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
