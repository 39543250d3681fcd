"""Readouts for people: the A/B readout (``ab``), the per-run report (``run_report``), input drift (``drift``)
and the routing of warnings and failures (``alerts``). Reads what the stages wrote; no stage imports it."""
