"""The factory end-of-line station: an operator loop over units, retest policy, labels, MES
hand-off and an operator panel, on the same harness that runs one plan (``hil station``)."""
