"""One module per scenario: ``NAME``, ``KEYS`` and ``run(bench) -> ScenarioResult``."""
