"""The benchmark: `python -m fedper.bench` (a preset in conf/bench.yaml; `bench=gpu` and
`bench=deployment` select the others in conf/bench/).

Parts, each a module: `settings` (the `bench:` keys), `federated` (the federated run and
the plain loop, measured), `plain` (the plain loop on the client core), `resources` (actors
counted as Flower counts them, GPUs per worker), `sampling` (memory and CPU of every
process), `preparation` (one client's data), `report` and `table` (the numbers and the
console), `gpu` (the GPU check), `deployment`, `federation` and `coldstart` (the Deployment
Engine's cost). Nothing is imported here: `coldstart` times imports in a fresh process.
"""
