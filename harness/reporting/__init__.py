"""Qualification reports: Allure labels and attachments, plots, the one-page summary per DUT,
``hil report`` (the Allure HTML) and ``hil compare`` (run against run, regressions first)."""
