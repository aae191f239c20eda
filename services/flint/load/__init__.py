"""flint load: a load generator that finds where a deployment's capacity runs out.

Python API (stable):
    RunConfig, TargetConfig, BoundsConfig, ArrivalConfig, SloConfig   (flint.load.config / .arrival / .slo)
    run(config, *, quiet=None) -> dict                 one run, merged over its generator processes
    capacity(config, levels..., ) -> dict              ramp/bracket search for the knee (flint.load.capacity)
    make_scenario(name, seed, params) -> Scenario      (flint.load.scenarios)
    write_report(result, out_dir) / load_report(path)  (flint.load.report)
The CLI `flint load run|capacity|compare|mock-server|report` wraps these (flint.load.cli).
"""
