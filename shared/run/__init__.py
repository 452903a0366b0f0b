"""Orchestration of a training run, above data, artifact and evaluation: the loop both backends share
(loop), its end (finish: pack, re-evaluate, summary), the backend registry (backends) and the run
folder (rundir)."""
