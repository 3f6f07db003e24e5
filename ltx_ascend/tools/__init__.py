"""Tools that prove and measure: ltx-verify (accuracy), ltx-bench (speed), ltx-plan (fit and roofline)."""
